"""`livedit jobs list|run NAME|history`: the scheduled jobs, run one now, and their past runs."""

from __future__ import annotations

from updater.cli.context import default_user


def _schedule_rows(config) -> list[tuple[str, float, object]]:
    """(job, minutes, next run) from the job store, without running anything."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    from updater.scheduler import intervals, job_store_url

    scheduler = BackgroundScheduler(jobstores={"default": SQLAlchemyJobStore(url=job_store_url(config))})
    scheduler.start(paused=True)
    try:
        return [(name, minutes, getattr(scheduler.get_job(name), "next_run_time", None))
                for name, minutes in intervals(config).items()]
    finally:
        scheduler.shutdown(wait=False)


def cmd_jobs_list(args) -> None:
    from updater.jobs import JobLog

    with JobLog.open(args.config) as runs:
        print(f"{'job':<9} {'every':>10}  {'next run (stored schedule)':<27} last run")
        for name, minutes, next_run in _schedule_rows(args.config):
            every = f"{minutes:g} min" if minutes else "off"
            last = runs.history(name, limit=1)
            shown = f"{last[0].started_at} {last[0].outcome or 'running'}" if last else "never"
            when = next_run.strftime("%Y-%m-%d %H:%M:%S %Z") if next_run else "-"
            print(f"{name:<9} {every:>10}  {when:<27} {shown}")


def cmd_jobs_run(args) -> None:
    from assistant.editing.editor import Editor
    from updater.jobs import JobRunner, check_job

    check_job(args.name)                           # an unknown name fails before the model loads
    with Editor.open(args.config, state_dir=args.state_dir, progress=not args.quiet) as editor:
        runner = JobRunner.open(editor, args.config)
        try:
            run = runner.run(args.name, who=args.who)
        finally:
            runner.close()
    _print_run(run)


def _print_run(run) -> None:
    figures = ", ".join(f"{key} {value}" for key, value in run.figures.items())
    print(f"run {run.id}: {run.job} by {run.who} at {run.started_at}: {run.outcome}"
          + (f" ({figures})" if figures else "") + (f": {run.message}" if run.message else ""))


def cmd_jobs_history(args) -> None:
    from updater.jobs import JobLog, check_job

    with JobLog.open(args.config) as runs:
        history = runs.history(check_job(args.job) if args.job else None, args.limit)
    if not history:
        print("no job has run yet")
    for run in history:
        _print_run(run)


def register(commands) -> None:
    jobs = commands.add_parser("jobs", help="the scheduled jobs (detect, apply, verify, snapshot)")
    sub = jobs.add_subparsers(dest="jobs_command", required=True)
    sub.add_parser("list", help="each job's interval, next run and last run").set_defaults(run=cmd_jobs_list)
    run = sub.add_parser("run", help="run one job now, as the scheduler would")
    run.add_argument("name", help="detect, apply, verify or snapshot")
    run.add_argument("--who", default=default_user(), help="recorded on the run and the items (default: OS user)")
    run.set_defaults(run=cmd_jobs_run)
    history = sub.add_parser("history", help="past runs, newest first, with their figures")
    history.add_argument("--job", help="only this job")
    history.add_argument("--limit", type=int, default=20)
    history.set_defaults(run=cmd_jobs_history)
