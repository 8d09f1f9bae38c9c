"""python -m lab.detect ... == lab detect ... (the lab's typer CLI; see `lab detect --help`)."""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    """Run `lab detect` with `argv`; return its exit code (2 on bad input)."""
    from typer.main import get_command

    from lab.cli import app

    cmd = get_command(app)
    args = ["detect", *(sys.argv[1:] if argv is None else list(argv))]
    try:
        rc = cmd.main(args=args, prog_name="python -m lab.detect", standalone_mode=False)
    except SystemExit as e:  # click's own exit (e.g. --help)
        return int(e.code or 0)
    except Exception as e:  # click usage errors and typer.Exit
        code = getattr(e, "exit_code", None)
        if code is None:
            raise
        if hasattr(e, "format_message"):
            print(f"error: {e.format_message()}", file=sys.stderr)
        return int(code)
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
