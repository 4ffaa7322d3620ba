"""A tiny Visivo-like CLI with telemetry in one `with` block.

python -m examples.cli_app.cli run --dag-filter +my_chart+ --threads 4 --output-dir /tmp/out
"""

from __future__ import annotations

import argparse
import sys
import time

from telemetry_middleware import Telemetry

telemetry = Telemetry(
    app_name="visivo",
    app_version="1.4.0",
    project_name="demo-project",
    api_key="phc_demo_key",
    host="http://127.0.0.1:8765",  # VISIVO_POSTHOG_HOST overrides this
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    with telemetry.track_command(argv) as command:
        parser = argparse.ArgumentParser(prog="visivo")
        sub = parser.add_subparsers(dest="cmd", required=True)
        run = sub.add_parser("run")
        run.add_argument("--dag-filter")
        run.add_argument("--threads", type=int, default=1)
        run.add_argument("--output-dir")
        compile_ = sub.add_parser("compile")
        compile_.add_argument("--fail", action="store_true")
        args = parser.parse_args(argv[1:])
        if args.cmd == "run":
            time.sleep(0.02)  # the "jobs"
            command.job_count = args.threads
            print(f"ran {args.threads} jobs")
        else:
            command.object_counts = {"charts": 3, "traces": 5, "dashboards": 1}
            if args.fail:
                raise ValueError("compile failed: secret-table-name not found")
            print("compiled 9 objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
