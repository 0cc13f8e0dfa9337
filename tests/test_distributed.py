"""Two-process training through fairseq's own distributed engine (torch.distributed, gloo, loopback only) keeps
the ranks' parameters identical and matches single-process training with the same global batch. Both ranks run
the unpatched `fairseq-hydra-train`; the plugin makes fairseq's logging-output gather work on gloo
(mamba_hubert.patches.gloo_gather).

fairseq on CPU: its default `ddp_backend=pytorch_ddp` passes `device_ids=[0]` to DistributedDataParallel,
which refuses a CPU module, so these runs use `legacy_ddp` (fairseq's own all-reduce of gradients). Its
`torch.multiprocessing.spawn` starts min(cuda devices, world size) = 0 processes on CPU, so each rank is started
here as its own process (`distributed_no_spawn=true`, `distributed_rank=r`, a `tcp://127.0.0.1` rendezvous).

What must be equal for world size 2 x batch 1 to match world size 1 x batch 1 x update_freq 2:
- the data: fairseq gives rank r the epoch's batches r, r+2, ...; update_freq 2 groups batches 2k and 2k+1,
  so update k sees the same two utterances either way;
- the utterances' lengths: every utterance is cropped to task.max_sample_size (below the shortest one), at a
  random start that the plugin draws from (seed, epoch, utterance ids), so wherever the batch is collated;
- randomness: fairseq re-seeds torch to seed + update before each update on every rank, so rank 1's dropout
  would replay rank 0's while the second micro-batch of update_freq 2 draws fresh values: no dropout. Span
  masks are drawn from (seed, update, utterance ids), the same on either rank and either micro-batch.

The I(X;T) probe at validation runs on rank 0 alone, which broadcasts its values: both runs log the same ones.

Only rank 0 writes checkpoints, so rank 1's parameters are read through validation, which fairseq runs on every
rank, each on its own shard of the valid set with its own parameters (rank 1 scores utterance 1 of 3): after
every update the two-rank validation must equal single-process validation of the same parameters.
"""

import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from mamba_hubert.tasks import MambaHubertPretrainingTask
from tests.fairseq_runs import (
    SMALL_MODEL,
    assert_same_parameters,
    follow,
    load_state,
    logged_records,
    make_tone_corpus,
    pretrain_overrides,
    start,
    train_command,
)

UPDATES = 4
SAME_GLOBAL_BATCH = [*SMALL_MODEL, "common.log_format=json", "common.log_interval=1", "dataset.batch_size=1",
                     "task.max_sample_size=12000", f"optimization.max_update={UPDATES}",
                     "dataset.validate_interval_updates=1",
                     "model.dropout=0", "model.dropout_input=0", "model.dropout_features=0",
                     "model.attention_dropout=0", "model.activation_dropout=0", "model.encoder_layerdrop=0",
                     # the I(X;T) probe at validations 1 and 3
                     "task.mi_interval_updates=2", "task.mi_probe_utterances=2", "task.mi_mine_iterations=30",
                     "task.mi_seeds=1"]
MI_PROBE_LINE = "I(X;T) probe: 2 utterances of valid"
TRAIN_KEYS = ("loss", "loss_m_0", "loss_u_0", "gnorm", "wpb")


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_gloo_ranks_stay_identical_and_match_one_process(tmp_path):
    corpus = make_tone_corpus(tmp_path / "tones")  # 12-24k samples each: all longer than the crop
    save_dir = tmp_path / "two_ranks"
    distributed = ["distributed_training.distributed_world_size=2", "distributed_training.distributed_backend=gloo",
                   f"distributed_training.distributed_init_method=tcp://127.0.0.1:{free_loopback_port()}",
                   "distributed_training.distributed_no_spawn=true", "distributed_training.ddp_backend=legacy_ddp"]
    ranks = [start(train_command("pretrain/tiny_mamba", pretrain_overrides(
                 corpus, save_dir, *SAME_GLOBAL_BATCH, *distributed, f"distributed_training.distributed_rank={rank}")),
                 tmp_path / f"rank{rank}", env={"GLOO_SOCKET_IFNAME": "lo"})  # gloo's own sockets on loopback too
             for rank in (0, 1)]
    try:  # both read at once: a rank blocked on a full output pipe would stall the other in an all-reduce
        with ThreadPoolExecutor(2) as pool:
            outputs = list(pool.map(lambda rank: follow(ranks[rank], tmp_path / f"rank{rank}.log"), (0, 1)))
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
    assert "distributed init (rank 0)" in outputs[0] and "done training" in outputs[0]
    # rank 0 logs the metrics of both ranks; fairseq stops a run whose ranks' gradient norms disagree
    two_train, two_valid = logged_records(outputs[0], "train_inner"), logged_records(outputs[0], "valid")

    one_dir = tmp_path / "one_process"
    one = follow(start(train_command("pretrain/tiny_mamba", pretrain_overrides(
        corpus, one_dir, *SAME_GLOBAL_BATCH, "optimization.update_freq=[2]")), one_dir), tmp_path / "one.log")
    one_train, one_valid = logged_records(one, "train_inner"), logged_records(one, "valid")

    assert sorted(two_train) == sorted(one_train) == sorted(two_valid) == sorted(one_valid) == [1, 2, 3, 4]
    for step in one_train:
        assert two_train[step]["bsz"] == one_train[step]["bsz"] == "2"  # the global batch: two utterances
        assert float(one_train[step]["gnorm"]) > 0 and float(one_train[step]["lr"]) > 0  # the parameters did move
        for key in TRAIN_KEYS:
            assert float(two_train[step][key]) == pytest.approx(float(one_train[step][key]), abs=1e-3), (step, key)
        # fairseq logs per-step means: two ranks validate in 2 steps (2 + 1 utterances: rank 1 scored one), one
        # process in 3 steps of 1. The loss (and ppl, from the unrounded loss) is weighted: comparable as is.
        assert (two_valid[step]["valid_bsz"], one_valid[step]["valid_bsz"]) == ("1.5", "1")
        assert float(two_valid[step]["valid_loss"]) == pytest.approx(float(one_valid[step]["valid_loss"]), abs=1e-3)
        assert float(two_valid[step]["valid_ppl"]) == pytest.approx(float(one_valid[step]["valid_ppl"]), rel=1e-4)
        # rank 0 probed and broadcast its values: what one process logs, not a mean of two ranks' runs
        mi_keys = sorted(key for key in one_valid[step] if key.startswith("valid_mi_xt"))
        assert sorted(key for key in two_valid[step] if key.startswith("valid_mi_xt")) == mi_keys
        assert bool(mi_keys) == (step in (1, 3)), (step, mi_keys)
        for key in mi_keys:
            assert float(two_valid[step][key]) == pytest.approx(float(one_valid[step][key]), abs=1e-2), (step, key)
    assert outputs[0].count(MI_PROBE_LINE) == one.count(MI_PROBE_LINE) == 2  # fairseq silences rank 1's INFO lines

    checkpoint = load_state(save_dir / "checkpoint_last.pt")
    assert checkpoint["optimizer_history"][-1]["num_updates"] == UPDATES
    assert_same_parameters(checkpoint["model"], load_state(one_dir / "checkpoint_last.pt")["model"])


def probe_on_rank(rank: int, port: int, calls: "torch.multiprocessing.Queue") -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=rank)
    try:
        task = MambaHubertPretrainingTask.__new__(MambaHubertPretrainingTask)  # only the probe is needed
        task.probe_mutual_information = lambda model: calls.put(rank) or {"mi_xt_layer1": 1.5 + rank}
        calls.put(("values", rank, task.probe_on_rank_zero(torch.nn.Linear(1, 1))))

        def fail(model):
            raise ValueError("no probe set")

        task.probe_mutual_information = fail  # every rank raises, none waits in the broadcast
        try:
            task.probe_on_rank_zero(torch.nn.Linear(1, 1))
        except RuntimeError as error:
            calls.put(("error", rank, str(error)))
    finally:
        torch.distributed.destroy_process_group()


def test_mi_probe_runs_on_rank_zero_and_every_rank_gets_its_values(monkeypatch):
    """The probe itself is replaced by a stand-in that records which rank ran it (the real one runs in the test
    above, whose rank 1 logs nothing): rank 0 alone runs it and both ranks return rank 0's values."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # gloo's own sockets on loopback
    context = torch.multiprocessing.get_context("spawn")
    calls = context.Queue()
    torch.multiprocessing.spawn(probe_on_rank, args=(free_loopback_port(), calls), nprocs=2)
    records = [calls.get(timeout=10) for _ in range(5)]
    assert sorted(r for r in records if isinstance(r, int)) == [0]
    assert sorted(r for r in records if isinstance(r, tuple)) == [
        ("error", 0, "the I(X;T) probe failed on rank 0: ValueError: no probe set"),
        ("error", 1, "the I(X;T) probe failed on rank 0: ValueError: no probe set"),
        ("values", 0, {"mi_xt_layer1": 1.5}), ("values", 1, {"mi_xt_layer1": 1.5})]


def test_mi_probe_refuses_a_fully_sharded_model():
    class FullyShardedDataParallel(torch.nn.Module):  # fairseq's FSDP wrapper, as the probe recognises it: by name
        def __init__(self) -> None:
            super().__init__()
            self.module = torch.nn.Linear(1, 1)

    task = MambaHubertPretrainingTask.__new__(MambaHubertPretrainingTask)
    with pytest.raises(ValueError, match="fully_sharded"):
        task.probe_on_rank_zero(FullyShardedDataParallel())
