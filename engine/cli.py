"""`python -m engine ...`: the command line for pipelines, the protocol server and the demo.

Exit codes: 0 ok, 1 user error (one clear line on stderr, no traceback), 2 usage, 3 no corresponding part.
Heavy modules (torch, the models) are imported inside the commands: `serve` must protect stdout first,
and `--help` should be instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from engine import __version__
from engine.errors import BsbError, os_reason
from engine.models.profiles import PROFILES  # no torch import: --help stays instant

EXIT_OK, EXIT_USER, EXIT_USAGE, EXIT_NO_PART = 0, 1, 2, 3


class NoPart(BsbError):
    """The match ran but found no corresponding part (exit code 3)."""

    code = "no_part"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=("auto", *PROFILES), default=None,
                        help="model profile (default auto: paper on CUDA, else fast; tiny = random weights, plumbing only)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--models", type=Path, default=None, help="models folder (default: the model store's)")
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default: $BSB_CACHE_DIR or ~/.cache/bsb/cache)")
    _cache_limit(parser)
    parser.add_argument("--offline", action="store_true", default=None,
                        help="never download model weights (also: BSB_OFFLINE=1)")


def _cache_limit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-limit", default=None, metavar="SIZE",
                        help="cache size limit, e.g. 500M or 20G (default: $BSB_CACHE_LIMIT or 8G)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine",
                                     description="BSB engine: click an image, get the matching mesh part.")
    parser.add_argument("--version", action="version", version=f"bsb-engine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="speak the NDJSON protocol on stdin/stdout (for the Blender add-on), "
                                     "or over the network with --listen")
    _common(p)
    p.add_argument("--listen", default=None, metavar="HOST:PORT",
                   help="serve remote add-ons over TCP instead of stdin/stdout (docs/protocol.md, Remote engine)")
    p.add_argument("--token", default=None, help="the remote token (default: $BSB_REMOTE_TOKEN, else the one "
                                                 "stored in the config folder, else a new one, printed)")
    p.add_argument("--cert", type=Path, default=None, help="TLS certificate (PEM) for --listen")
    p.add_argument("--key", type=Path, default=None, help="TLS private key (PEM) for --listen")
    p.add_argument("--max-request", default="256M", metavar="SIZE", help="largest remote request (default 256M)")
    p.add_argument("--jobs-dir", type=Path, default=None,
                   help="per-client job folders of --listen (default: remote-jobs beside the cache folder)")

    p = sub.add_parser("prepare", help="distil features and train the iSeg decoder for a mesh (cached)")
    p.add_argument("mesh", type=Path)
    p.add_argument("--up", choices=("y", "z"), default="y")
    _common(p)

    p = sub.add_parser("match", help="find the mesh part matching a clicked image part")
    p.add_argument("mesh", type=Path)
    p.add_argument("image", type=Path)
    p.add_argument("--up", choices=("y", "z"), default="y")
    p.add_argument("--pixel", nargs=2, type=float, action="append", default=[], metavar=("X", "Y"),
                   help="a positive click in image pixels (x = column, y = row from the top); repeatable")
    p.add_argument("--negative", nargs=2, type=float, action="append", default=[], metavar=("X", "Y"),
                   help="a negative click; repeatable")
    p.add_argument("--box", nargs=4, type=float, default=None, metavar=("X0", "Y0", "X1", "Y1"))
    p.add_argument("--min-confidence", type=float, default=None)
    p.add_argument("--early", action="store_true",
                   help="also print a provisional answer (DINO field only) as soon as it exists, before the "
                        "preparation ends")
    _outputs(p)
    _common(p)

    p = sub.add_parser("segment", help="iSeg: select a mesh part from vertex clicks")
    p.add_argument("mesh", type=Path)
    p.add_argument("--up", choices=("y", "z"), default="y")
    p.add_argument("--click", type=int, action="append", default=[], metavar="V",
                   help="a vertex click; a negative number -W is a negative click on vertex W")
    p.add_argument("--neg", type=int, action="append", default=[], metavar="W", help="a negative click on vertex W")
    _outputs(p)
    _common(p)

    p = sub.add_parser("cache", help="list or clear the cache")
    p.add_argument("action", choices=("list", "clear"))
    p.add_argument("--kind", default=None, help="only entries of this kind (e.g. mesh, image)")
    p.add_argument("--cache", type=Path, default=None)
    _cache_limit(p)

    p = sub.add_parser("demo", help="the bundled demo: one click on a reference image -> a mesh part")
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    _common(p)

    try:
        from engine.models.commands import add_commands
    except ImportError:
        pass
    else:
        add_commands(sub)
    from engine.batch.cli import add_command as add_batch

    add_batch(sub)
    from engine.parts.cli import add_commands as add_parts_commands  # segment-all, find-part, fetch-detector

    add_parts_commands(sub)
    return parser


def _outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="result .npz (weights, mask, scores, ...)")
    p.add_argument("--ply", type=Path, default=None, help="also write a PLY with the part coloured")
    p.add_argument("--preview", type=Path, default=None, help="also write a PNG preview of the result")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `serve` keeps fd 1 for the protocol: take it before anything (the parser's plugins) imports torch.
    proto = _protect() if argv[:1] == ["serve"] else None
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
        return int(exc.code or 0)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "serve": _serve, "prepare": _prepare, "match": _match, "segment": _segment,
        "cache": _cache, "demo": _demo,
    }
    args.proto = proto
    run = commands.get(args.command) or getattr(args, "func", None)
    if run is None:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    try:
        result = run(args)
        return EXIT_OK if result is None else int(result)
    except NoPart as exc:
        print(f"no corresponding part: {exc.message}", file=sys.stderr)
        return EXIT_NO_PART
    except BsbError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USER
    except OSError as exc:  # an I/O problem no check caught: one line naming the path, no traceback
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot read or write{where}: {os_reason(exc)}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------------------------------

def _protect():
    from engine.service.protocol import protect_stdout

    return protect_stdout()


def _serve(args: argparse.Namespace) -> int:
    from engine.service.protocol import Channel, FdReader

    proto = args.proto or _protect()
    from engine.service import jobs, server

    if args.listen:
        return _listen(args)
    state = jobs.EngineState(_session(args))
    return server.serve(jobs.make_handlers(state), jobs.hello(state), FdReader(sys.stdin.fileno()), Channel(proto),
                        status=lambda: jobs.status(state))


def _listen(args: argparse.Namespace) -> int:
    """Every option is checked before the models load: a typo costs a second, not a minute."""
    from engine.cache import parse_size
    from engine.remote import auth, server as remote
    from engine.service import jobs

    token, source = auth.resolve_token(args.token)
    remote.check_listen(args.listen, token)
    limits = remote.Limits(max_request=parse_size(args.max_request, "--max-request"))
    context = remote.tls_context(args.cert, args.key)
    state = jobs.EngineState(_session(args))
    root = args.jobs_dir or state.session.cache.root.parent / "remote-jobs"
    print(f"[engine] remote token ({source}): {token}" if source.startswith("new") else
          f"[engine] remote token: {source}" if token else "[engine] no token: loopback clients only",
          file=sys.stderr, flush=True)
    handlers = jobs.make_handlers(state)
    engine = remote.RemoteServer(handlers, jobs.hello(state), lambda: jobs.status(state), token, root, limits)
    return remote.run(engine, args.listen, context)


def _open_cache(args: argparse.Namespace):
    """The cache of `--cache`/`--cache-limit` (or their environment defaults), its leftovers swept."""
    from engine.cache import Cache, parse_size

    limit = None if args.cache_limit is None else parse_size(args.cache_limit, "--cache-limit")
    cache = Cache(args.cache, max_bytes=limit)
    cache.remove_leftovers()
    return cache


def _session(args: argparse.Namespace):
    from engine.pipeline import Session

    cache = _open_cache(args)
    profile = None if args.profile == "auto" else args.profile  # None: engine.pipeline.default_profile(device)
    session = Session(profile=profile, device=args.device, models_dir=args.models, cache_dir=cache.root,
                      offline=args.offline)
    session.cache = cache
    return session


def _tqdm_progress(label: str):
    """A progress callback drawing a tqdm bar on stderr (stdout stays clean for pipelines)."""
    from tqdm import tqdm

    bar = tqdm(total=1000, desc=label, file=sys.stderr, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
               leave=False)

    def progress(fraction: float, message: str) -> None:
        bar.n = int(1000 * min(1.0, max(0.0, fraction)))
        bar.set_postfix_str(message[:60], refresh=True)

    progress.close = bar.close  # type: ignore[attr-defined]
    return progress


def _warn_random(state) -> None:
    if state.random_weights:
        print(f"note: profile '{state.profile}' uses RANDOM weights: results are a plumbing check, not real answers",
              file=sys.stderr)


def _load_prepared(state, mesh_path: Path, up: str, on_provisional=None):
    """The prepared mesh; `on_provisional(PreparedMesh)` gets the provisional one first (engine.provisional)."""
    from engine.mesh import load_mesh
    from engine.provisional import prepare_early
    from engine.service.inputs import require_file

    mesh = load_mesh(require_file(mesh_path, "mesh"), up=up)
    progress = _tqdm_progress("prepare")
    try:
        if on_provisional is None:
            prepared = state.prepare(mesh, progress=progress)
        else:
            prepared = prepare_early(state, mesh, on_provisional, progress=progress)
    finally:
        progress.close()
    return mesh, prepared


def _prepare(args: argparse.Namespace) -> int:
    state = _session(args)
    _warn_random(state)
    mesh, prepared = _load_prepared(state, args.mesh, args.up)
    print(f"prepared {args.mesh}: {mesh.num_vertices} vertices, {mesh.num_faces} faces, "
          f"{'from the cache' if prepared.cached else 'computed'} ({prepared.seconds:.1f}s)")
    return EXIT_OK


def _match(args: argparse.Namespace) -> int:
    from engine import results
    from engine.images import load_image
    from engine.preview import save_png
    from engine.service.inputs import check_query, require_file

    points = [list(p) for p in args.pixel] + [list(p) for p in args.negative]
    labels = [1] * len(args.pixel) + [0] * len(args.negative)
    if not points and args.box is None:
        raise BsbError("give at least one --pixel X Y (or a --box); see `python -m engine match --help`")
    _check_outputs(args)
    require_file(args.mesh, "mesh")
    image = load_image(require_file(args.image, "image"))
    points, labels, box, min_confidence = check_query(points, labels, args.box, args.min_confidence,
                                                      image.original_size)
    state = _session(args)
    _warn_random(state)

    def provisional(early) -> None:  # printed at once; the final answer follows when preparation ends
        answer = state.match(early, state.set_image(image), points, labels, box=box, min_confidence=min_confidence)
        print("provisional (DINO field; iSeg still training): "
              + results.describe_match(answer, early.mesh.num_vertices), flush=True)

    mesh, prepared = _load_prepared(state, args.mesh, args.up, provisional if args.early else None)
    progress = _tqdm_progress("match")
    try:
        pimage = state.set_image(image, progress=progress)
        match = state.match(prepared, pimage, points, labels, box=box, min_confidence=min_confidence,
                            progress=progress)
    finally:
        progress.close()
    results.write_match_npz(args.out, match, mesh.num_vertices, image.original_size, state.random_weights)
    if args.ply is not None:
        results.write_colored_ply(args.ply, mesh, match.vertex_mask)
    if args.preview is not None:
        clicks = [(x, y, label) for (x, y), label in zip(points, labels)]
        save_png(args.preview, results.match_preview(mesh, image.rgb, match, clicks, image.scale,
                                                     state.random_weights))
    print(f"final (iSeg): {results.describe_match(match, mesh.num_vertices)}")
    if not match.found:
        raise NoPart(match.reason or "no valid candidate")
    return EXIT_OK


def _segment(args: argparse.Namespace) -> int:
    from engine import results

    from engine.service.inputs import check_clicks, require_file

    clicks = check_clicks([(abs(v), v >= 0) for v in args.click] + [(w, False) for w in args.neg])
    _check_outputs(args)
    require_file(args.mesh, "mesh")
    state = _session(args)
    _warn_random(state)
    mesh, prepared = _load_prepared(state, args.mesh, args.up)
    weights, mask = state.refine(prepared, clicks)
    results.write_segment_npz(args.out, weights, mask, clicks, random_weights=state.random_weights)
    if args.ply is not None:
        results.write_colored_ply(args.ply, mesh, mask)
    if args.preview is not None:
        from engine.preview import save_png

        title = results.preview_title(f"iSeg selection from clicks {args.click + [-w for w in args.neg]}",
                                      state.random_weights)
        save_png(args.preview, results.titled([results.render_highlight(mesh, mask)], title))
    print(f"selected {int(mask.sum())} of {mesh.num_vertices} vertices -> {args.out}")
    return EXIT_OK


def _check_outputs(args: argparse.Namespace) -> None:
    """Every output path writable before any work starts: a long match must not end unwritable."""
    from engine.service.inputs import require_writable

    for flag in ("out", "ply", "preview"):
        if getattr(args, flag) is not None:
            require_writable(getattr(args, flag), f"--{flag}")


def _cache(args: argparse.Namespace) -> int:
    cache = _open_cache(args)
    if args.action == "clear":
        print(f"removed {cache.clear(args.kind)} entries from {cache.root}")
        return EXIT_OK
    entries = [e for e in cache.entries() if args.kind is None or e.kind == args.kind]
    import datetime

    for e in entries:
        used = datetime.datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d %H:%M")
        label = e.meta.get("name") or e.meta.get("source") or ""
        print(f"{e.kind:<8} {e.key}  {e.size / 2**20:9.2f} MiB  {used}  {label}")
    total = sum(e.size for e in entries)
    print(f"{len(entries)} entries, {total / 2**20:.2f} MiB in {cache.root}")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from engine import demo

    return demo.run(args)
