"""The `latentforge` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from latentforge import __version__
from latentforge.rows import redact_credentials

EPILOG = """\
examples:
  latentforge run examples/tiny.yaml                      # offline demo: tiny models, local Ray
  latentforge run my.yaml --set model=ltx2 --set buckets=960x544x49
  latentforge run my.yaml --address ray://head:10001      # join a running Ray cluster
  latentforge plan my.yaml                                # show what would run
  latentforge inspect out/demo                            # rows per bucket, errors, size; --report, --sample ID
  latentforge export out/ --format ltx2 --to ltx2_data/   # a trainer's own layout from an output
  latentforge cluster render --provider aws --out cluster.yaml   # then: ray up cluster.yaml (docs/cluster.md)
  latentforge submit my.yaml --address http://head:8265 --wait     # a Ray job on that cluster (docs/cluster.md)

config keys (YAML; any key can be overridden with --set a.b=c):
  input, output, model, buckets, pipeline, input_format, model_path, storage_options,
  prepare.{target_fps,resize_filter}, encode_video.{dtype,store_logvar,batch_size,min_actors,
  max_actors,num_gpus,with_audio,i2v,image_encoder}, encode_text.{enabled,trigger_word,strip_openers,dtype,
  batch_size,min_actors,max_actors,num_gpus}, ray.{address,num_cpus,use_gpus,no_progress_timeout_s,
  actor_init_retries}
  split.*    scene clips (docs/scenes.md): enabled, detector, min_scene_len, max_scene_len,
             filter_shorter_than, skip_start, skip_end, max_scenes, mode, clip_name, ...
  caption.*  captioning (docs/captioning.md): enabled, backend, model, model_path, task, prompt,
             prompt_file, fps, max_frames, max_pixels, override, manifest, use_8bit, base_url, ...
  reference.{kind,canny_low,canny_high,...}   IC-LoRA references (docs/references.md)
  export, export_to, decode.samples_per_bucket   trainer layouts, previews at the end of a run
see docs/config.md for every key.
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="pipeline config (YAML)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set encode_video.batch_size=8 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentforge",
        description="Turn raw video and images into VAE latent and text-embedding shards for video "
        "diffusion training, on Ray Data (embedded local Ray, or a cluster).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"latentforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a pipeline config end to end",
        description="Run a pipeline: manifest -> probe -> [split_scenes] -> [caption] -> prepare -> "
        "encode_video/encode_text -> shards (pipeline: precompute / all), or the split or caption "
        "pipeline alone. Finished samples already in the output are skipped, so a rerun resumes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(run)
    run.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
    run.add_argument(
        "--overwrite", action="store_true",
        help="delete the output's earlier results first (needed when options that change results differ from the run that made it)",
    )
    run.add_argument("--no-report", action="store_true", help="skip report.html at the end of the run (docs/report.md)")

    plan = sub.add_parser(
        "plan",
        help="validate a config and print its stages, buckets, models and resources",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(plan)
    plan.add_argument("--gpus", action="store_true", default=None, help="show resources as on a cluster with GPUs")
    plan.add_argument("--address", help="join this Ray cluster (nothing is started) to show what `auto` pools resolve to there")

    export = sub.add_parser(
        "export",
        help="write an output's latents and embeddings in a trainer's own layout",
        description="Read the canonical shards of OUTPUT on Ray and write them as the trainer of "
        "FORMAT loads them (ltx2: LTX-2 trainer .precomputed/; fastvideo: FastVideo parquet; "
        "cogvideox: CogVideo finetune cache; musubi: musubi-tuner cache). Existing files are "
        "skipped, so a rerun resumes; each file is written whole or not at all. A format whose "
        "trainer cannot read the output's model family or buckets is refused. See docs/exporters.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("output", help="a latentforge output folder or bucket prefix")
    export.add_argument("--format", dest="formats", action="append", required=True, metavar="FORMAT", help="ltx2, fastvideo, cogvideox or musubi (repeatable)")
    export.add_argument("--to", help="destination folder or bucket prefix; each layout goes to TO/FORMAT (default: OUTPUT/export/FORMAT)")
    export.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="e.g. --set storage_options.endpoint_url=http://... or --set ray.num_cpus=4 (repeatable)",
    )
    export.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
    decode = sub.add_parser(
        "decode",
        help="decode a few stored latents per bucket back to mp4/png previews",
        description="VAE-decode stored latents of OUTPUT (the first samples of each bucket) into "
        "OUTPUT/previews/<bucket>/<sample_id>.mp4 (png for images), with the VAE the output was made "
        "with, so you can see exactly what will be trained on. Runs in this process (a GPU when visible).",
    )
    decode.add_argument("output", help="a latentforge output folder or bucket prefix")
    decode.add_argument("--samples", type=int, default=2, metavar="N", help="samples per bucket (default 2)")
    decode.add_argument("--bucket", metavar="WxHxF", help="only this bucket")
    decode.add_argument("--to", help="folder for the previews (default OUTPUT/previews)")
    decode.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="e.g. --set storage_options.endpoint_url=http://... (repeatable)")
    verify = sub.add_parser(
        "verify",
        help="check an output: every sample once, every shard whole, every caption embedded",
        description="Check OUTPUT on Ray (ids and shapes by column projection): every shard opens, "
        "no temporary file is left, no sample_id or caption_id twice, each latent's shape is its "
        "bucket's, every caption of a latent has an embedding, no sample is both a latent and an "
        "error; with --input, every manifest row is a latent or an error row. Exit 0 when all "
        "holds, 1 with the list of problems otherwise.",
    )
    verify.add_argument("output", help="a latentforge output folder or bucket prefix")
    verify.add_argument("--input", help="the manifest (or folder) the output was made from")
    verify.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="e.g. --set storage_options.endpoint_url=http://... (repeatable)")
    verify.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
    inspect = sub.add_parser(
        "inspect",
        help="summarise an output: rows, buckets, encoders, errors by kind, size, config",
        description="Summarise OUTPUT (read on Ray by column projection): rows per bucket, encoders, errors by "
        "kind, size on storage, the config it was made with. --sample ID shows one row's metadata and tensor "
        "shapes; --report (re)builds OUTPUT/report.html. See docs/report.md.",
    )
    inspect.add_argument("output", help="a latentforge output folder or bucket prefix")
    inspect.add_argument("--sample", metavar="ID", help="show this sample_id's row: metadata, tensor shapes, its caption's embeddings")
    inspect.add_argument("--report", action="store_true", help="(re)build report.html and report/*.png of the output")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="e.g. --set storage_options.endpoint_url=http://... (repeatable)")
    inspect.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
    _add_cluster_args(sub)
    _add_job_args(sub)
    return parser


def _add_cluster_args(sub) -> None:
    cluster = sub.add_parser("cluster", help="cluster configs shipped with latentforge (docs/cluster.md)")
    render = cluster.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND").add_parser(
        "render",
        help="fill in the AWS (ray up) or KubeRay (kubectl apply) config and validate it",
        description="Fill in a shipped cluster config (on-demand head without tasks, spot CPU workers, "
        "spot GPU workers from zero) and validate it: the AWS config against Ray's cluster-config "
        "schema, the KubeRay manifests for the fields the pipeline relies on. See docs/cluster.md.",
    )
    render.add_argument("--provider", required=True, help="aws (ray up) or kuberay (kubectl apply)")
    render.add_argument("--kind", default="rayjob", help="kuberay: rayjob (one run, default) or raycluster (long-lived)")
    render.add_argument("--name", help="cluster / resource name (default: latentforge)")
    render.add_argument("--region", help="aws: region (default: us-west-2)")
    render.add_argument("--gpu-instance-type", help="GPU workers' instance type (default: g6.xlarge)")
    render.add_argument("--cpu-instance-type", help="CPU workers' instance type (aws default: m6i.4xlarge)")
    render.add_argument("--head-instance-type", help="aws: the on-demand head's instance type (default: m6i.xlarge)")
    render.add_argument("--max-gpu-workers", type=int, metavar="N", help="most GPU workers (default: 4)")
    render.add_argument("--max-cpu-workers", type=int, metavar="N", help="most CPU workers (default: 8)")
    render.add_argument("--idle-timeout-minutes", type=float, metavar="M", help="remove idle workers after M minutes (default: 5)")
    render.add_argument("--image", help="container image (default: Ray's GPU image of the Ray installed here)")
    render.add_argument("--package", help="pip spec installed on every node (default: latentforge; '' for none, when the image has it)")
    render.add_argument("--pipeline-config", metavar="FILE", help="kuberay rayjob: add the ConfigMap holding this pipeline config")
    render.add_argument("--out", metavar="FILE", help="write here (default: stdout)")


def _cluster(args: argparse.Namespace) -> int:
    from pathlib import Path

    from latentforge.cluster import render as r

    names = ("provider", "kind", "name", "region", "gpu_instance_type", "cpu_instance_type", "head_instance_type",
             "max_gpu_workers", "max_cpu_workers", "idle_timeout_minutes", "image", "package", "pipeline_config")
    options = r.RenderOptions(**{n: getattr(args, n) for n in names})
    try:
        text = r.dump(r.render(options), options)
    except r.RenderError as e:
        print(f"latentforge: {redact_credentials(str(e))}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out} ({options.provider}); checked: " + ("Ray's cluster-config schema and latentforge's checks" if options.provider == "aws" else "latentforge's KubeRay checks"), file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


JOB_COMMANDS = ("submit", "status", "logs", "stop")
ADDRESS_HELP = "Ray job server (dashboard) URL (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS if http(s)://, else http://127.0.0.1:8265)"


def _add_job_args(sub) -> None:
    submit = sub.add_parser(
        "submit",
        help="run a config as a Ray job on a cluster (Ray Jobs API)",
        description="Validate CONFIG here, then submit `latentforge run` as a Ray job: the config, with the --set "
        "overrides applied and local paths made absolute, travels as latentforge.yaml in the job's working_dir "
        "(never on the command line; nothing printed shows storage_options or --env values). The driver reserves "
        "no GPU; with no --driver-cpus / --driver-resource Ray pins it to the head node. Prints the job id; "
        "--wait streams the logs and exits 0 on SUCCEEDED, 1 on FAILED / STOPPED. See docs/cluster.md, "
        "\"Submitting jobs\".",
    )
    _add_config_args(submit)
    submit.add_argument("--address", help=ADDRESS_HELP)
    submit.add_argument("--overwrite", action="store_true", help="the job runs `latentforge run --overwrite`: the output's earlier results are deleted first")
    submit.add_argument("--wait", action="store_true", help="stream the job's logs until it ends; exit 0 on SUCCEEDED, 1 otherwise")
    submit.add_argument("--submission-id", metavar="ID", help="the job's id (default: Ray makes one); an id already used on the cluster is refused (exit 2)")
    submit.add_argument("--ship-package", action="store_true", help="upload this latentforge package with the job (py_modules), for images without it or with another version")
    submit.add_argument("--pip", action="append", default=[], metavar="SPEC", help="pip requirement installed for the job, e.g. --pip latentforge==0.1.0 (repeatable)")
    submit.add_argument("--env", action="append", default=[], metavar="KEY[=VALUE]", help="environment variable for the driver and every worker of the job; KEY alone copies this shell's value (repeatable)")
    submit.add_argument("--driver-cpus", type=float, default=0, metavar="N", help="CPUs reserved for the driver (default 0; >0 lets Ray place it on any node unless --driver-resource is given)")
    submit.add_argument("--driver-resource", metavar="NAME", help="custom resource the head / on-demand nodes advertise (ray start --resources='{\"NAME\": 1}'); the driver asks for 0.001 of it, so it never lands on spot or GPU nodes")
    for name, text in (("status", "show a submitted job's status"), ("logs", "print a job's logs"), ("stop", "stop a job and wait until Ray reports it STOPPED")):
        p = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]} (Ray Jobs API). See docs/cluster.md.")
        p.add_argument("job_id", metavar="JOB_ID", help="the submission id `latentforge submit` printed")
        p.add_argument("--address", help=ADDRESS_HELP)
        if name == "logs":
            p.add_argument("--follow", "-f", action="store_true", help="keep streaming until the job ends")


def _jobs(args: argparse.Namespace) -> int:
    from latentforge.cluster import jobs
    from latentforge.config import ConfigError

    try:
        if args.command == "submit":
            job_id = jobs.submit(
                args.config, args.overrides, address=args.address, submission_id=args.submission_id,
                ship_package=args.ship_package, pip=args.pip, env=args.env,
                driver_cpus=args.driver_cpus, driver_resource=args.driver_resource, overwrite=args.overwrite,
            )
            print(f"submitted {job_id} to {jobs.resolve_address(args.address)}", flush=True)
            if not args.wait:
                print(f"follow it with: latentforge logs {job_id} --follow  (status, stop: latentforge status|stop {job_id})")
                return 0
        client = jobs.client(args.address)
        job_id = getattr(args, "job_id", None) or job_id
        if args.command == "status":
            print("\n".join(jobs.describe(jobs.info(client, job_id))))
        elif args.command == "logs" and not args.follow:
            jobs.logs(client, job_id)
        elif args.command == "stop":
            was_running, status = jobs.stop(client, job_id)
            print(f"{job_id}: {status}" + ("" if was_running else " (it was not running)"))
        else:  # submit --wait, logs --follow
            jobs.info(client, job_id)
            status = jobs.follow(client, job_id)
            print(f"{job_id}: {status}", file=sys.stderr)
            return jobs.status_code(status) if args.command == "submit" else 0
    except (ConfigError, jobs.JobError) as e:
        print(f"latentforge: {redact_credentials(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nlatentforge: stopped watching; the job keeps running (latentforge stop {job_id} ends it)", file=sys.stderr)
        return 130
    return 0


def _export(args: argparse.Namespace) -> int:
    from latentforge.config import ConfigError
    from latentforge.pipelines import export_output

    overrides = list(args.overrides) + ([f"ray.address={args.address}"] if args.address else [])
    try:
        summary = export_output(args.output, args.formats, args.to, overrides)
    except ConfigError as e:
        print(f"latentforge: {redact_credentials(str(e))}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def _decode(args: argparse.Namespace) -> int:
    from latentforge.config import ConfigError, apply_overrides
    from latentforge.pipelines.decode import decode_output

    storage_options = apply_overrides({}, list(args.overrides)).get("storage_options") or {}
    try:
        written = decode_output(args.output, max(1, args.samples), args.bucket, args.to, storage_options)
    except ConfigError as e:
        print(f"latentforge: {redact_credentials(str(e))}", file=sys.stderr)
        return 2
    print("\n".join(written))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from latentforge.pipelines import verify_output

    overrides = list(args.overrides) + ([f"ray.address={args.address}"] if args.address else [])
    report = verify_output(args.output, args.input, overrides)
    for kind, entry in sorted(report["problems"].items()):
        print(f"PROBLEM {kind}: {entry['count']}", file=sys.stderr)
        for example in entry["examples"]:
            print(f"  {example}", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


def _inspect(args: argparse.Namespace) -> int:
    from latentforge.config import apply_overrides
    from latentforge.pipelines import inspect_output, report_output
    from latentforge.pipelines.inspection import is_output, sample, sample_lines, summary_lines

    overrides = list(args.overrides) + ([f"ray.address={args.address}"] if args.address else [])
    storage_options = apply_overrides({}, overrides).get("storage_options") or {}
    if not is_output(args.output, storage_options):
        print(f"latentforge: {redact_credentials(args.output)} is not a latentforge output (no run.json, no latents/)", file=sys.stderr)
        return 2
    if args.sample:
        found = sample(args.output, args.sample, storage_options)
        if found is None:
            print(f"latentforge: no sample {args.sample} in {redact_credentials(args.output)} (latents or errors)", file=sys.stderr)
            return 1
        print(json.dumps(found, indent=2, default=str) if args.json else "\n".join(sample_lines(found)))
        return 0
    if args.report:
        made = report_output(args.output, overrides)
        print(f"wrote {made['html']} ({len(made['figures'])} PNG files under report/, {made['contact_tiles']} contact tiles)")
        return 0
    summary = inspect_output(args.output, overrides)
    print(json.dumps(summary, indent=2, default=str) if args.json else "\n".join(summary_lines(summary)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "export":
        return _export(args)
    if args.command == "verify":
        return _verify(args)
    if args.command == "decode":
        return _decode(args)
    if args.command == "inspect":
        return _inspect(args)
    if args.command == "cluster":
        return _cluster(args)
    if args.command in JOB_COMMANDS:
        return _jobs(args)
    from latentforge.config import ConfigError, load_config

    overrides = list(args.overrides)
    if getattr(args, "address", None):
        overrides.append(f"ray.address={args.address}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"latentforge: {redact_credentials(str(e))}", file=sys.stderr)
        return 2

    from latentforge import pipelines

    if args.command == "plan":
        try:
            stages = pipelines.plan(cfg, use_gpus=args.gpus)
        except (ConfigError, NotImplementedError) as e:
            print(f"latentforge: {redact_credentials(str(e))}", file=sys.stderr)
            return 2
        print(f"input:   {cfg.input} (format: {cfg.input_format})")
        print(f"output:  {cfg.output}")
        print(f"model:   {cfg.model}" + (f" from {cfg.model_path}" if cfg.model_path else ""))
        print(f"buckets: {'; '.join(str(b) for b in cfg.bucket_list())}")
        print(f"ray:     {cfg.ray.cluster_address() or 'embedded local Ray'}")
        print("stages:")
        width = max(len(s.name) for s in stages)
        runs_width = max(len(s.runs_as) for s in stages)
        for i, s in enumerate(stages, 1):
            print(f"  {i:>2}. {s.name:<{width}}  {s.runs_as:<{runs_width}}  {s.resources}")
            print(f"      {'':<{width}}  {s.detail}")
        problems = pipelines.fit_problems(cfg, use_gpus=args.gpus)
        for problem in problems:
            print(f"latentforge: {problem}", file=sys.stderr)
        return 2 if problems else 0

    try:
        summary = pipelines.run(cfg, overwrite=args.overwrite, make_report=not args.no_report)  # checks what it can before Ray starts (pipelines.preflight)
    except (ConfigError, pipelines.ManifestError, NotImplementedError) as e:
        print(f"latentforge: {redact_credentials(str(e))}", file=sys.stderr)
        return 2
    counts = summary["counts"]
    print(json.dumps({"output": cfg.output, "wall_seconds": summary["wall_seconds"], "counts": counts, "report": summary.get("report")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
