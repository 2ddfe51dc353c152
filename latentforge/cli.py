"""The `latentforge` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from latentforge import __version__

EPILOG = """\
examples:
  latentforge run examples/tiny.yaml                      # offline demo: tiny models, local Ray
  latentforge run my.yaml --set model=ltx2 --set buckets=960x544x49
  latentforge run my.yaml --address ray://head:10001      # join a running Ray cluster
  latentforge plan my.yaml                                # show what would run
  latentforge export out/ --format ltx2 --to ltx2_data/   # a trainer's own layout from an output
  latentforge cluster render --provider aws --out cluster.yaml   # then: ray up cluster.yaml (docs/cluster.md)

config keys (YAML; any key can be overridden with --set a.b=c):
  input, output, model, buckets, pipeline, input_format, model_path, storage_options,
  prepare.{target_fps,resize_filter}, encode_video.{dtype,store_logvar,batch_size,min_actors,
  max_actors,num_gpus}, encode_text.{enabled,trigger_word,strip_openers,dtype,
  batch_size,min_actors,max_actors,num_gpus}, ray.{address,num_cpus,use_gpus,no_progress_timeout_s,
  actor_init_retries}
  split.*    scene clips (docs/scenes.md): enabled, detector, min_scene_len, max_scene_len,
             filter_shorter_than, skip_start, skip_end, max_scenes, mode, clip_name, ...
  caption.*  captioning (docs/captioning.md): enabled, backend, model, model_path, task, prompt,
             prompt_file, fps, max_frames, max_pixels, override, manifest, use_8bit, base_url, ...
  export, export_to   trainer layouts written at the end of a run (docs/exporters.md)
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
    _add_cluster_args(sub)
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
        print(f"latentforge: {e}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out} ({options.provider}); checked: " + ("Ray's cluster-config schema and latentforge's checks" if options.provider == "aws" else "latentforge's KubeRay checks"), file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _export(args: argparse.Namespace) -> int:
    from latentforge.config import ConfigError
    from latentforge.pipelines import export_output

    overrides = list(args.overrides) + ([f"ray.address={args.address}"] if args.address else [])
    try:
        summary = export_output(args.output, args.formats, args.to, overrides)
    except ConfigError as e:
        print(f"latentforge: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "export":
        return _export(args)
    if args.command == "cluster":
        return _cluster(args)
    from latentforge.config import ConfigError, load_config

    overrides = list(args.overrides)
    if getattr(args, "address", None):
        overrides.append(f"ray.address={args.address}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"latentforge: {e}", file=sys.stderr)
        return 2

    from latentforge import pipelines

    if args.command == "plan":
        try:
            stages = pipelines.plan(cfg, use_gpus=args.gpus)
        except (ConfigError, NotImplementedError) as e:
            print(f"latentforge: {e}", file=sys.stderr)
            return 2
        print(f"input:   {cfg.input} (format: {cfg.input_format})")
        print(f"output:  {cfg.output}")
        print(f"model:   {cfg.model}" + (f" from {cfg.model_path}" if cfg.model_path else ""))
        print(f"buckets: {'; '.join(str(b) for b in cfg.bucket_list())}")
        print(f"ray:     {cfg.ray.address or os.environ.get('RAY_ADDRESS') or 'embedded local Ray'}")
        print("stages:")
        width = max(len(s.name) for s in stages)
        runs_width = max(len(s.runs_as) for s in stages)
        for i, s in enumerate(stages, 1):
            print(f"  {i:>2}. {s.name:<{width}}  {s.runs_as:<{runs_width}}  {s.resources}")
            print(f"      {'':<{width}}  {s.detail}")
        return 0

    try:
        summary = pipelines.run(cfg)  # checks what it can before Ray starts (pipelines.preflight)
    except (ConfigError, NotImplementedError) as e:
        print(f"latentforge: {e}", file=sys.stderr)
        return 2
    counts = summary["counts"]
    print(json.dumps({"output": cfg.output, "wall_seconds": summary["wall_seconds"], "counts": counts}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
