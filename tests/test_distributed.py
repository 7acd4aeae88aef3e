"""Data-parallel SVI (issue 9) on the CPU with gloo: the pieces in one process, then real jobs.

The ranks of most tests are started from the test process with the ``spawn`` method, in the
environment torchrun would give them (``spawned_ranks``; ``fork`` would be cheaper, but autograd
refuses to run in a child forked after the parent used it, as earlier tests in the suite do);
torchrun itself starts the workers of two tests: the killed-rank test (``ppl-models vae --nproc
2``) and the two-"node" gradient test (two torchrun agents meeting
over the loopback address). One uninterrupted 2-process run (a module fixture) serves several
tests: the run contract, bit-identical parameters, the comparison with one process and the
doubled batch, and the reference of the kill-and-resume test.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyro
import pytest
import torch
from ranks import as_rank, cli_ok, free_port, spawned_ranks

from ppl_models import cli, distributed, svi
from ppl_models.batches import DeviceBatches
from ppl_models.runs import read_json, read_metrics
from ppl_models.vae import evaluate
from ppl_models.vae.model import build_vae, data_plate
from ppl_models.vae.networks import build_networks

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
EPOCHS = 3


def tiny(data_dir, *extra, batch_size=32):
    """A VAE run of seconds on the synthetic digits: the MLP with 32 hidden units, latent 4."""
    return [
        "vae",
        "--config",
        str(REPO / "runs" / "vae_mnist_mlp.toml"),
        "--data-dir",
        str(data_dir),
        "--device",
        "cpu",
        "--quiet",
        "--batch-size",
        str(batch_size),
        "--latent-dim",
        "4",
        "--set",
        "hidden_dim=32",
        "--set",
        "eval_images=64",
        "--set",
        "iw_images=9",  # not a multiple of 2: the ranks' shares differ
        "--set",
        "iw_ks=1,10,100",
        "--set",
        "posterior_draws=12",
        *extra,
    ]


def worker_env() -> dict:
    """The environment of a subprocess: this checkout's package first, one thread each."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(item[5:]) for item in environ if item.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def wait_for(path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


# ----------------------------------------------------------------------------- in one process


def test_rank_and_epoch_seeds():
    assert distributed.rank_seed(7, 0) == 7  # one process is rank 0 of 1
    ranks = [distributed.rank_seed(7, r) for r in range(4)]
    assert len(set(ranks)) == 4
    # rank 1 of seed 0 is not rank 0 of seed 1, as plain seed + rank would make it
    assert distributed.rank_seed(0, 1) != distributed.rank_seed(1, 0)
    epochs = [distributed.epoch_seed(7, e) for e in range(1, 5)]
    assert len(set(epochs)) == 4 and epochs[0] == distributed.epoch_seed(7, 1)
    assert not set(epochs) & set(ranks)


def test_batches_give_every_rank_the_same_steps_and_together_the_doubled_batch():
    data = torch.arange(23)
    seed = distributed.epoch_seed(0, 1)
    ranks = [
        list(DeviceBatches(data, 4, rank=r, world_size=2, seed=seed, subsample=True))
        for r in range(2)
    ]
    one = list(DeviceBatches(data, 8, seed=seed, subsample=True))
    assert [len(b) for b in ranks] == [3, 3]  # 11 items each: 4, 4, 3; one of 23 is dropped
    assert DeviceBatches(data, 4, rank=1, world_size=2, seed=seed).batch_sizes() == [4, 4, 3]
    for step in range(3):
        (x0, idx0, n0), (_, idx1, n1) = ranks[0][step], ranks[1][step]
        assert n0 == n1 == 23 and torch.equal(x0, data[idx0])
        union = torch.stack([idx0, idx1], 1).flatten()  # the strides interleave
        assert torch.equal(union, one[step][1][: len(union)])
    seen = torch.cat([b[1] for r in ranks for b in r])
    assert len(set(seen.tolist())) == 22
    with pytest.raises(ValueError, match="pass seed"):
        DeviceBatches(data, 4, rank=0, world_size=2)
    # a pass's permutation depends on the seed alone, not on the global RNG
    torch.manual_seed(1)
    first = [b[0] for b in DeviceBatches(data, 5, seed=3)]
    torch.manual_seed(2)
    again = [b[0] for b in DeviceBatches(data, 5, seed=3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_data_plate_scales_a_minibatch_to_the_full_data():
    model, guide = build_vae(*build_networks("mlp", 3, 8), 3, "normal")
    loss_fn = svi.make_objective(model, guide, svi.make_elbo("trace"))
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    torch.manual_seed(0)
    batch = loss_fn(x)
    torch.manual_seed(0)
    scaled = loss_fn(x, torch.tensor([3, 9, 0, 41, 7]), 50)
    torch.testing.assert_close(scaled, batch * 10)
    with pytest.raises(ValueError, match="one index per image"):
        data_plate(x, torch.arange(4), 50)


def test_a_single_process_context_is_the_identity():
    ctx = distributed.Context()
    assert ctx.is_main and not ctx.parallel and ctx.share(7) == slice(0, 7)
    t = torch.arange(3.0)
    assert ctx.all_reduce_mean(t) is t
    assert ctx.gather("a") == ["a"] and ctx.broadcast(5) == 5 and ctx.on_main(lambda: 4) == 4
    module = torch.nn.Linear(2, 1)
    assert ctx.wrap(module) is module
    with distributed.session(torch.device("cpu")) as outside:
        assert outside.world_size == 1 and outside.backend is None


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_evaluation_shares_cover_the_images_in_order(world_size):
    for n in (1, 2, 9, 10, 64):
        shares = [
            distributed.Context(rank=r, world_size=world_size).share(n) for r in range(world_size)
        ]
        covered = [i for s in shares for i in range(n)[s]]
        assert covered == list(range(n))
        assert max(len(range(n)[s]) for s in shares) - min(len(range(n)[s]) for s in shares) <= 1


def test_sharded_evaluation_gathers_in_image_order():
    """Two ranks simulated in turn: rank 1's parts travel to rank 0 as gather would send them."""
    model, guide = build_vae(*build_networks("mlp", 2, 8), 2, "normal")
    x = torch.rand(9, 1, 28, 28) * 2 - 1
    labels = torch.arange(9)
    kwargs = dict(iw_images=5, ks=[1, 10], keep=3, chunk=4)
    sent = []

    class Rank:
        def __init__(self, rank):
            self.ctx = distributed.Context(rank=rank, world_size=2)

        def share(self, n):
            return self.ctx.share(n)

        def gather(self, obj):
            if self.ctx.rank == 1:
                sent.append(obj)
                return None
            return [obj, sent[0]]

    assert evaluate.evaluate(model, guide, x, x, labels, parallel=Rank(1), **kwargs) is None
    result, draws = evaluate.evaluate(model, guide, x, x, labels, parallel=Rank(0), **kwargs)
    alone, _ = evaluate.evaluate(model, guide, x, x, labels, **kwargs)
    np.testing.assert_allclose(result.latent_loc, alone.latent_loc, rtol=1e-5, atol=1e-6)
    assert result.elbo.shape == (9,) and result.khat.shape == (5,)
    assert draws.log_weights.shape == (5, 10) and draws.z.shape == (3, 5, 2)


def test_failure_report_names_the_rank_that_died_first():
    def failure(exitcode, pid):
        return SimpleNamespace(
            exitcode=exitcode,
            pid=pid,
            timestamp=100,
            signal_name=lambda: {-9: "SIGKILL", -15: "SIGTERM"}.get(exitcode, ""),
        )

    err = SimpleNamespace(failures={0: failure(2, 11), 1: failure(-9, 12)})
    rank, reason = distributed.describe_failure(err, 2)
    assert rank == 1
    assert reason == (
        "rank 1 of 2 died of signal SIGKILL (pid 12); torchrun stopped the other ranks"
    )
    err = SimpleNamespace(failures={0: failure(2, 11), 1: failure(-15, 12)})
    assert distributed.describe_failure(err, 2)[0] == 0


def test_nproc_is_checked_before_anything_starts(tmp_path, capsys):
    assert cli.main(["vae", "--nproc", "0", "--out", str(tmp_path / "r")]) == 2
    assert "--nproc must be >= 1" in capsys.readouterr().err
    assert cli.main(["vae", "--resume", str(tmp_path), "--lr", "1", "--nproc", "2"]) == 2
    assert "only --epochs may change" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_nproc_launches_the_same_command_into_one_agreed_folder(tmp_path, monkeypatch):
    launched = []
    monkeypatch.setattr(distributed, "launch", lambda *args: launched.append(args))
    monkeypatch.chdir(tmp_path)
    argv = ["vae", "--config", str(REPO / "runs" / "vae_mnist_mlp.toml"), "--nproc", "3"]
    assert cli.main(argv) == 0
    [(nproc, worker_argv, run_dir)] = launched
    assert nproc == 3 and run_dir.is_absolute() and not run_dir.exists()
    assert run_dir.parent == tmp_path / "runs" / "vae_mnist_mlp"
    assert worker_argv == [*argv, "--out", str(run_dir)]  # the workers ignore --nproc


def test_wrap_refuses_parameters_outside_the_module():
    def model(x):
        pyro.param("mu", torch.zeros(()))

    loss_fn = svi.make_objective(model, lambda x: None, svi.make_elbo("trace"))
    ctx = distributed.Context(rank=0, world_size=2)
    with pytest.raises(ValueError, match="local_params"):
        ctx.wrap(loss_fn, warmup=(torch.zeros(2),))


# ----------------------------------------------------------------------------- real jobs


def _chdir_and_cli(folder: Path, argv: list[str]) -> None:
    os.chdir(folder)
    cli_ok(argv)


@pytest.fixture(scope="module")
def ddp_run(synthetic_mnist, tmp_path_factory):
    """One uninterrupted run of ``ppl-models vae`` as ranks 0 and 1 of a gloo group."""
    folder = tmp_path_factory.mktemp("ddp")
    run = folder / "run"
    args = tiny(synthetic_mnist, "--epochs", str(EPOCHS), "--out", str(run))
    # the folder is the ranks' working directory: a stray write by any rank lands in it
    spawned_ranks(_chdir_and_cli, folder, args)
    return SimpleNamespace(folder=folder, path=run)


def test_two_processes_train_identical_parameters_and_only_rank_0_writes(ddp_run, capsys):
    run = ddp_run.path
    s = read_json(run / "summary.json")
    assert s["status"] == "complete" and s["world_size"] == 2 and s["backend"] == "gloo"
    digests = s["parameter_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # bit-identical after training
    assert read_json(run / "env.json")["world_size"] == 2
    assert [m["epoch"] for m in read_metrics(run)] == list(range(1, EPOCHS + 1))
    # the other rank wrote nothing: the folder holds the one run, with no stray files
    assert sorted(p.name for p in ddp_run.folder.iterdir()) == ["run"]
    assert not list(run.glob(".*.tmp"))
    for name in ("checkpoint.pt", "evaluation.npz", "posterior.nc", "report.html"):
        assert (run / name).is_file(), name
    assert len(s["iw_bounds"]) == 3 and s["iw_images"] == 9 and s["eval_images"] == 64


def test_a_two_process_checkpoint_resumes_only_with_two_processes(ddp_run, capsys):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in ddp_run.path.iterdir())
    assert cli.main(["vae", "--resume", str(ddp_run.path), "--epochs", str(EPOCHS + 1)]) == 2
    assert "written by 2 processes; resume it with as many (--nproc 2), not 1" in (
        capsys.readouterr().err
    )
    assert sorted((p.name, p.stat().st_mtime_ns) for p in ddp_run.path.iterdir()) == before


def test_two_processes_match_one_process_with_the_doubled_batch(ddp_run, synthetic_mnist, tmp_path):
    """Same seed, same permutations, same images per step: only the Monte Carlo noise of the
    second rank's half differs, so the held-out ELBOs agree within Monte Carlo error."""
    out = tmp_path / "one"
    args = tiny(synthetic_mnist, "--epochs", str(EPOCHS), "--out", str(out), batch_size=64)
    assert cli.main(args) == 0
    one, two = read_json(out / "summary.json"), read_json(ddp_run.path / "summary.json")
    assert one["train_images"] == two["train_images"]
    error = np.hypot(one["heldout_elbo_se"], two["heldout_elbo_se"])
    assert abs(one["heldout_elbo"] - two["heldout_elbo"]) < 3 * error
    # the per-epoch training curves follow each other too (the first epoch starts from the
    # same initialisation: rank 0's, broadcast)
    for a, b in zip(read_metrics(out), read_metrics(ddp_run.path), strict=True):
        assert abs(a["train_elbo"] - b["train_elbo"]) < 0.02 * abs(a["train_elbo"])


class Unpicklable(RuntimeError):
    def __reduce__(self):
        raise TypeError("not picklable")


def _collective_failures() -> None:
    with distributed.session(torch.device("cpu")) as ctx:

        def fail():
            raise ValueError("output directory exists")

        with pytest.raises(ValueError, match="output directory exists"):
            ctx.on_main(fail)

        def fail_oddly():
            raise Unpicklable("odd")

        expected = Unpicklable if ctx.is_main else distributed.RankFailure
        with pytest.raises(expected, match="odd"):
            ctx.on_main(fail_oddly)
        # a rank that stops answering: the other gives up after the group's timeout
        if ctx.rank == 1:
            time.sleep(6)
            return
        start = time.monotonic()
        with pytest.raises(distributed.RankFailure, match="rank 0 of 2 lost the other ranks"):
            ctx.gather("anyone?")
        assert time.monotonic() - start < 5


def test_errors_on_rank_0_reach_every_rank_and_a_silent_rank_times_out(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "2")
    spawned_ranks(_collective_failures)


def _torchrun_node(node: int, port: int, out: Path) -> None:
    from torch.distributed import run as torchrun

    os.environ.update(worker_env())
    args = torchrun.parse_args(
        ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
        + ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "ppl-models-test"]
        + ["--rdzv-conf", f"is_host={int(node == 0)}", "--local-addr", "127.0.0.1"]
        + [str(TESTS / "ddp_gradient.py"), str(out)]
    )
    torchrun.run(args)


def test_ddp_gradient_across_two_nodes_equals_the_full_data_gradient(tmp_path):
    """Two torchrun "nodes" on the loopback address, one process each, average the gradients of
    their halves of the data; with the noise fixed per image, that is the single-process
    gradient of the full-data ELBO (no subsampling)."""
    sys.path.insert(0, str(TESTS))
    try:
        import ddp_gradient as worker
    finally:
        sys.path.remove(str(TESTS))
    # two torchrun agents ("nodes", spawned from this process) meet at a
    # c10d rendezvous on 127.0.0.1; each starts one worker, ``python tests/ddp_gradient.py``
    port = free_port()
    torch.multiprocessing.start_processes(
        _torchrun_node, args=(port, tmp_path), nprocs=2, start_method="spawn"
    )
    state = torch.load(tmp_path / "gradients.pt", weights_only=True)
    assert state["world"] == {"world_size": 2, "backend": "gloo"}
    # each rank initialised from its own seed: equal digests are DDP's broadcast
    assert state["digests"][0] == state["digests"][1]

    reference = worker.objective(seed=0)  # rank 0's initialisation
    x, _ = worker.data()
    with pyro.validation_enabled(False):
        reference(x).backward()  # all images, no subsampling: the full-data ELBO
    expected = worker.gradients(reference)
    assert state["gradients"].keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(state["gradients"][name], grad, rtol=1e-4, atol=1e-4)


def kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_kill_9_of_the_whole_job_then_resume_reproduces_the_uninterrupted_run(
    ddp_run, synthetic_mnist, tmp_path
):
    """Both ranks are killed with SIGKILL at once, right after the first checkpoint; nothing is
    recorded. ``--resume`` with 2 processes reproduces the uninterrupted run bit for bit."""
    run = tmp_path / "run"
    args = tiny(synthetic_mnist, "--epochs", "30", "--out", str(run))
    ranks = torch.multiprocessing.start_processes(
        as_rank, args=(free_port(), cli_ok, args), nprocs=2, start_method="spawn", join=False
    )
    try:
        wait_for(run / "checkpoint.pt")
    finally:
        kill(ranks.pids())
    with pytest.raises(torch.multiprocessing.ProcessExitedException, match="SIGKILL"):
        while not ranks.join():
            pass
    done = len(read_metrics(run))
    assert 1 <= done < EPOCHS, f"killed after {done} epochs; the test needs fewer than {EPOCHS}"
    assert not (run / "summary.json").exists()

    spawned_ranks(cli_ok, ["vae", "--resume", str(run), "--epochs", str(EPOCHS)])
    assert_same_run(run, ddp_run.path)


def assert_same_run(run: Path, reference: Path) -> None:
    """Every epoch's losses and the final evaluation of ``run`` equal ``reference``'s exactly."""
    keys = ("epoch", "train_elbo", "heldout_elbo")
    resumed = [[m[k] for k in keys] for m in read_metrics(run)]
    assert resumed == [[m[k] for k in keys] for m in read_metrics(reference)]
    a, b = read_json(run / "summary.json"), read_json(reference / "summary.json")
    assert a["status"] == "complete"
    for key in ("heldout_elbo", "iw_bounds", "khat_median", "parameter_digests"):
        assert a[key] == b[key], key


def test_a_killed_rank_ends_the_job_and_a_resume_reproduces_the_uninterrupted_run(
    ddp_run, synthetic_mnist, tmp_path, capsys
):
    """``ppl-models vae --nproc 2``; rank 1 is killed (SIGKILL) right after the first
    checkpoint. The other rank stops within seconds, the command fails with one line naming the
    dead rank, and so does summary.json. ``--resume`` with 2 processes then reproduces the
    uninterrupted run's losses of every epoch and its final evaluation, bit for bit."""
    run = tmp_path / "run"
    killed = {}

    def kill_rank_1():
        try:
            wait_for(run / "checkpoint.pt")
            pid = next(p for p in children(os.getpid()) if rank_of(p) == 1)
            killed["time"] = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            killed["pid"] = pid
        except BaseException:  # end the job anyway, then fail below
            kill([p for p in children(os.getpid()) if rank_of(p) is not None])
            raise

    killer = threading.Thread(target=kill_rank_1, daemon=True)
    killer.start()
    code = cli.main(tiny(synthetic_mnist, "--epochs", "1000", "--out", str(run), "--nproc", "2"))
    killer.join()
    assert "pid" in killed, "rank 1 was not found"
    stopped = time.monotonic() - killed["time"]
    assert code == 2
    assert stopped < 60, f"the job took {stopped:.0f} s to end after its rank died"
    expected = f"rank 1 of 2 died of signal SIGKILL (pid {killed['pid']})"
    assert f"ppl-models: error: {expected}" in capsys.readouterr().err
    s = read_json(run / "summary.json")
    assert s["status"] == "failed" and expected in s["error"] and "\n" not in s["error"]

    done = len(read_metrics(run))
    assert 1 <= done < EPOCHS, f"killed after {done} epochs; the test needs fewer than {EPOCHS}"
    # the resume as torchrun's two workers would run it (spawned ranks)
    spawned_ranks(cli_ok, ["vae", "--resume", str(run), "--epochs", str(EPOCHS)])
    assert_same_run(run, ddp_run.path)


def test_world_sizes_of_the_scaling_bench():
    from ppl_models.bench.scaling import parse_world_sizes

    assert parse_world_sizes("1,2,4") == [1, 2, 4]
    for bad in ("2,4", "1,1,2", "1,x", "4,2,1"):
        with pytest.raises(ValueError, match="starting at 1"):
            parse_world_sizes(bad)


def test_bench_reports_images_per_second_and_efficiency_per_world_size(
    synthetic_mnist, tmp_path, capsys, monkeypatch
):
    args = ["bench", "vae", "--device", "cpu", "--arch", "mlp", "--latent-dim", "4"]
    args += ["--batch-sizes", "16", "--steps", "2", "--repeats", "1", "--warmup", "1"]
    args += ["--epoch-images", "200", "--data-dir", str(synthetic_mnist), "--out", str(tmp_path)]
    # torchrun's launch is tested above; here the workers are spawned ranks running the command
    monkeypatch.setattr(distributed, "launch", lambda nproc, argv: spawned_ranks(cli_ok, argv))
    assert cli.main([*args, "--nproc", "1,2"]) == 0
    assert "efficiency" in capsys.readouterr().out
    result = read_json(tmp_path / "bench.json")
    assert result["benchmark"] == "vae-data-parallel" and result["backend"] == "gloo"
    rows = result["rows"]
    assert [(r["world_size"], r["global_batch"]) for r in rows] == [(1, 16), (2, 32)]
    for r in rows:
        assert r["images_per_s"] > 0
        assert r["speedup"] == pytest.approx(r["images_per_s"] / rows[0]["images_per_s"])
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["world_size"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]


@pytest.mark.cuda
def test_data_parallel_run_on_cuda_uses_nccl_and_one_gpu_per_process(synthetic_mnist, tmp_path):
    nproc = min(2, torch.cuda.device_count())
    run = tmp_path / "run"
    args = tiny(synthetic_mnist, "--epochs", "1", "--out", str(run), "--nproc", str(nproc))
    assert cli.main([*args[:6], "cuda", *args[7:]]) == 0  # --device cuda
    s = read_json(run / "summary.json")
    assert s["status"] == "complete" and s["device"].startswith("cuda")
    assert s["world_size"] == nproc and s["backend"] == ("nccl" if nproc > 1 else None)
    assert len(set(s["parameter_digests"])) == 1
