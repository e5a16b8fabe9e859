"""The idstream command, run as a newcomer would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streams.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_resolve_the_example_stream() -> None:
    done = run("resolve", "examples/touches.jsonl")
    assert done.returncode == 0, done.stderr
    profiles = [json.loads(line) for line in done.stdout.splitlines()]
    stderr = [json.loads(line) for line in done.stderr.splitlines()]
    summary = stderr[-1]["summary"]
    assert summary == {"applied": 7, "conflicts": 0, "duplicate": 1, "invalid": 1, "persons": 3,
                       "rejected_identifiers": 2, "reordered": 1}  # fmt: skip
    assert stderr[0] == {"line": 9, "error": stderr[0]["error"]}
    assert stderr[0]["error"]["errors"][0]["code"] == "json_invalid"
    ivan = next(p for p in profiles if "amo-501" in p["identifiers"].get("crm_contact_id", []))
    assert ivan["display_name"] == "Иван Петров"
    assert ivan["identifiers"]["phone"] == ["+79161234567"]
    assert ivan["identifiers"]["email"] == ["ivanpetrov@gmail.com"]
    assert ivan["deals"]["deal-9"]["stage"] == "qualified"
    assert ivan["touch_counts"] == {"call": 1, "crm_stage": 2, "form_submit": 1, "site_visit": 2}
    # two different people who both typed test@test.ru stay two people
    names = sorted(p["display_name"] for p in profiles if p is not ivan)
    assert names == ["Мария", "Пётр"]


def test_resolve_reads_stdin_and_prints_outcomes() -> None:
    event = {
        "event_id": "e1",
        "type": "call",
        "occurred_at": "2026-11-01T09:00:00+03:00",
        "source": "calltouch",
        "identifiers": [{"kind": "phone", "value": "8 916 123 45 67"}, {"kind": "phone", "value": "12"}],
    }
    done = run("resolve", "--changes", "-", stdin=json.dumps(event).encode() + b"\n")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["status"] == "applied"
    assert outcome["changes"][0]["kind"] == "created"
    assert outcome["rejected"] == [{"kind": "phone", "value": "12", "reason": "invalid_number",
                                    "message": "phone has no valid number for its country code"}]  # fmt: skip


def test_normalize_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["normalize", "phone", "8 (916) 123-45-67"]) == 0
    assert json.loads(capsys.readouterr().out)["normalized"] == "+79161234567"
    assert main(["normalize", "email", "test@test.ru"]) == 1
    assert json.loads(capsys.readouterr().out)["rejected"] == "placeholder_mailbox"


def test_schema_export(tmp_path: Path) -> None:
    assert main(["schema", "export", str(tmp_path)]) == 0
    schema = json.loads((tmp_path / "touch-event.v1.json").read_text(encoding="utf-8"))
    assert schema["title"] == "TouchEvent"
    assert set(schema["required"]) == {"event_id", "type", "occurred_at", "source", "identifiers"}


def test_ingest_refuses_a_delivery_timeout_out_of_range_and_a_file_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for seconds in ("0", "-5", "nan", "100000"):
        with pytest.raises(SystemExit) as exited:
            main(["ingest", "events.jsonl", "--delivery-timeout", seconds])
        assert exited.value.code == 2
        assert "--delivery-timeout" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "missing.jsonl")]) == 2
    assert "idstream ingest: cannot read" in capsys.readouterr().err
