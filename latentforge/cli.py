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
    plan.add_argument("--gpus", action="store_true", help="show resources as on a cluster with GPUs")

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
    return parser


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
