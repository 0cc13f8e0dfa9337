"""What the plugin's command-line tools share: fairseq's log format, and a user's mistake (a missing file, a bad
value, a checkpoint that cannot be loaded) ending the tool with one line naming the problem and exit status 1, not a
traceback (argparse's own usage errors exit with 2)."""

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from mamba_hubert.patches.checkpoint_loading import CheckpointLoadError


class UsageError(ValueError):
    """Input a user can fix; a tool reports it as one line."""


@contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """Within this block, UsageError, CheckpointLoadError and missing or misplaced files end the program with
    `prog: error: <message>` (argparse's format) and exit status 1; other errors keep their traceback."""
    try:
        yield
    except (UsageError, CheckpointLoadError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            PermissionError) as error:
        raise SystemExit(f"{prog}: error: {error}") from None


def setup_logging() -> None:
    """INFO messages on stderr in fairseq's format (replacing the handler fairseq's import may have installed)."""
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", datefmt="%Y-%m-%d %H:%M:%S",
                        level=logging.INFO, stream=sys.stderr, force=True)


@contextmanager
def warnings_only(*loggers: str) -> Iterator[None]:
    """Within this block the named loggers pass warnings and errors only (e.g. fairseq's full config dump at INFO each
    time a checkpoint is loaded)."""
    previous = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


def add_shard_arguments(parser: argparse.ArgumentParser) -> None:
    """--data, --split, --out, --nshard and --rank of a tool that writes fairseq's feature shards of a manifest."""
    parser.add_argument("--data", required=True, help="directory with {split}.tsv")
    parser.add_argument("--split", required=True, help="manifest name, e.g. train")
    parser.add_argument("--out", required=True, help="output directory for {split}_{rank}_{nshard}.npy/.len")
    parser.add_argument("--nshard", type=int, default=1, help="split the manifest into this many shards")
    parser.add_argument("--rank", type=int, default=0, help="the shard to write (0 .. nshard - 1)")


def check_shard_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exits with argparse's one-line error unless the shard exists and the manifest is there."""
    if not 0 <= args.rank < args.nshard:
        parser.error(f"--rank must be in 0 .. {args.nshard - 1} for --nshard {args.nshard}, got {args.rank}")
    if not os.path.isfile(os.path.join(args.data, f"{args.split}.tsv")):
        parser.error(f"no manifest {os.path.join(args.data, args.split + '.tsv')}")
