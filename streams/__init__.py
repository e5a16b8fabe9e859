"""The running service: settings, the command line and (next) the Faust app and its agents."""
