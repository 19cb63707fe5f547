"""The launchers the stage scripts choose: torchrun on each of several nodes (SLURM's variables or
NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT), the DeepSpeed launcher with a hostfile, and
llava_moslora.train.launch's exit codes. Both multi-process paths must train stage 2 to the
losses of one torchrun with 2 processes."""
import os
import subprocess
from types import SimpleNamespace

import pytest

from helpers import ROOT, STEADY, free_port, losses, run_script, script_env, stage2_env


def resolved_launch(**env):
    """What scripts/lib/launch.sh decides under `env` (sourced, nothing started): the result, with
    .banner (its "launch: ..." line), .accumulation and .argv (the launcher command) added."""
    settings = {"GLOBAL_BATCH": "64", "PER_DEVICE_BATCH": "2", "ZERO": "2", **env}
    shown = subprocess.run(["bash", "-c", 'source scripts/lib/launch.sh && printf "%s\\n" "$GRAD_ACCUM" "${LAUNCH[@]}"'],
                           env={k: v for k, v in script_env(settings).items() if not k.startswith("SLURM_") or k in env},
                           cwd=ROOT, capture_output=True, text=True)
    lines = shown.stdout.splitlines()
    shown.banner = next((line for line in lines if line.startswith("launch: ")), "")
    values = [line for line in lines if not line.startswith("launch: ")]
    shown.accumulation, shown.argv = (values[0], values[1:]) if values else (None, [])
    return shown


def option(argv, name):
    return argv[argv.index(name) + 1]


def test_slurm_variables_give_every_node_the_same_rendezvous():
    slurm = {"SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[03-04,07],cpu1", "SLURM_JOB_ID": "123456", "NUM_GPUS": "4"}
    nodes = [resolved_launch(**slurm, SLURM_NODEID=str(rank)) for rank in (0, 1)]
    for rank, shown in enumerate(nodes):
        assert shown.returncode == 0, shown.stderr
        accumulation, argv = shown.accumulation, shown.argv
        assert accumulation == "4"  # 64 = 2 per device x 4 GPUs x 2 nodes x 4
        assert argv[1:3] == ["-m", "llava_moslora.train.launch"]
        assert (option(argv, "--nnodes"), option(argv, "--node_rank"), option(argv, "--nproc_per_node")) == ("2", str(rank), "4")
        assert (option(argv, "--master_addr"), option(argv, "--master_port")) == ("gpu03", str(20000 + 123456 % 10000))
        assert f"node {rank} of 2 (rendezvous gpu03:{20000 + 123456 % 10000}), 8 process(es)" in shown.banner


def test_explicit_node_variables_win_and_bad_ones_are_refused():
    shown = resolved_launch(NNODES="3", NODE_RANK="2", MASTER_ADDR="10.0.0.5", MASTER_PORT="31000", NUM_GPUS="1",
                            GLOBAL_BATCH="6", SLURM_NNODES="8")
    argv = shown.argv
    assert (option(argv, "--nnodes"), option(argv, "--node_rank")) == ("3", "2")
    assert (option(argv, "--master_addr"), option(argv, "--master_port")) == ("10.0.0.5", "31000")
    single = resolved_launch(NUM_GPUS="2", GLOBAL_BATCH="8")
    argv = single.argv
    assert (option(argv, "--nnodes"), option(argv, "--master_addr")) == ("1", "127.0.0.1")
    # one node, no port given: one the system has free, so runs side by side (a test suite's
    # workers, two users) never meet at the same rendezvous; here with the range a fixed
    # default or a random pick near it would use (29500-30499) taken
    import contextlib
    import socket
    with contextlib.ExitStack() as taken:
        busy = set()
        for port in range(29500, 30500):
            listener = taken.enter_context(socket.socket())
            with contextlib.suppress(OSError):
                listener.bind(("127.0.0.1", port))
                listener.listen()
                busy.add(str(port))
        ports = {option(resolved_launch(NUM_GPUS="2", GLOBAL_BATCH="8").argv, "--master_port") for _ in range(3)}
    assert ports and not ports & busy, ports
    refused = resolved_launch(NNODES="2", NODE_RANK="2", NUM_GPUS="1", GLOBAL_BATCH="8")
    assert refused.returncode == 2 and "NODE_RANK=2 must be in 0..1" in refused.stderr
    both = resolved_launch(NNODES="2", HOSTFILE="/dev/null", NUM_GPUS="1", GLOBAL_BATCH="8")
    assert both.returncode == 2 and "choose one" in both.stderr
    uneven = resolved_launch(NNODES="2", NUM_GPUS="3", GLOBAL_BATCH="8")
    assert uneven.returncode == 2 and "x 6 processes" in uneven.stderr and "set PER_DEVICE_BATCH" in uneven.stderr


def test_more_processes_than_the_recipe_take_a_smaller_per_device_batch_not_a_bigger_global_one():
    """LLaVA's stage 2 (global 128, 16 per device on one node of 8) on 2 nodes: 8 per device."""
    two_nodes = resolved_launch(NNODES="2", NODE_RANK="0", NUM_GPUS="8", GLOBAL_BATCH="128", PER_DEVICE_BATCH="16")
    assert two_nodes.returncode == 0, two_nodes.stderr
    assert two_nodes.accumulation == "1"
    assert "16 process(es), per-device batch 8 x accumulation 1 = global batch 128 (lowered from 16" in two_nodes.banner
    one_node = resolved_launch(NUM_GPUS="8", GLOBAL_BATCH="128", PER_DEVICE_BATCH="16")
    assert "per-device batch 16 x accumulation 1 = global batch 128, ZeRO-2" in one_node.banner  # as given
    fewer = resolved_launch(NUM_GPUS="2", GLOBAL_BATCH="128", PER_DEVICE_BATCH="16")
    assert fewer.accumulation == "4" and "lowered" not in fewer.banner


def test_the_launcher_ends_with_128_plus_the_signal_the_ranks_stopped_on():
    from llava_moslora.train.launch import signal_exit_code, with_defaults

    failure = lambda code: SimpleNamespace(exitcode=code)  # noqa: E731
    assert signal_exit_code({0: failure(143), 1: failure(143)}) == 143
    assert signal_exit_code({0: failure(138)}) == 138 and signal_exit_code({0: failure(130)}) == 130
    assert signal_exit_code({0: failure(143), 1: failure(1)}) is None  # one rank failed for another reason
    assert signal_exit_code({0: failure(1)}) is None and signal_exit_code({0: failure(137)}) is None  # SIGKILL: not a save
    assert with_defaults(["--nnodes", "1", "-m", "x"]) == [
        "--signals_to_handle=SIGTERM,SIGINT,SIGUSR1,SIGHUP,SIGQUIT", "--shutdown_timeout=300", "--nnodes", "1", "-m", "x"]
    assert with_defaults(["--shutdown-timeout", "60", "--signals_to_handle=SIGTERM", "-m", "x"]) == [
        "--shutdown-timeout", "60", "--signals_to_handle=SIGTERM", "-m", "x"]


@pytest.mark.slow
def test_two_nodes_of_one_process_train_as_one_node_of_two(shapes_data, stage1, uninterrupted, tmp_path):
    """Two torchrun invocations (--nnodes 2, one process each) meeting at a localhost rendezvous,
    writing one output directory as nodes on a shared file system do."""
    out = tmp_path / "two-nodes"
    port = str(free_port())
    nodes = [subprocess.Popen(["bash", str(ROOT / "scripts" / "finetune.sh"), "--max_steps", "10", "--save_steps", "3",
                               *STEADY],
                              env=script_env({**stage2_env(shapes_data, stage1, out), "NNODES": "2", "NODE_RANK": str(rank),
                                              "NUM_GPUS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=900)[0] for node in nodes]
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-4000:]
    assert "node 1 of 2 (rendezvous 127.0.0.1:" in outputs[1]
    two_nodes, one_node = losses(out), losses(uninterrupted)
    print(f"\none node of 2 {one_node}\ntwo nodes of 1 {two_nodes}")
    assert len(two_nodes) == 10 and two_nodes == pytest.approx(one_node, rel=1e-3)


@pytest.mark.slow
def test_deepspeed_launcher_with_a_localhost_hostfile(shapes_data, stage1, uninterrupted, tmp_path):
    """The hostfile path, on one host: the deepspeed launcher checks ssh to every host it names
    (this machine runs no sshd), so the test passes its --no_ssh_check through LAUNCHER_ARGS."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    out = tmp_path / "hostfile-run"
    result = run_script("finetune.sh", {**stage2_env(shapes_data, stage1, out), "HOSTFILE": str(hostfile),
                                        "LAUNCHER_ARGS": "--no_ssh_check"},
                        "--max_steps", "10", "--save_steps", "3", *STEADY)
    assert "launch: 2 process(es)" in result.stdout
    hostfile_losses, one_node = losses(out), losses(uninterrupted)
    assert len(hostfile_losses) == 10 and hostfile_losses == pytest.approx(one_node, rel=1e-3)


@pytest.mark.parametrize("script", ["pretrain", "finetune"])
def test_the_sbatch_files_parse_and_pass_their_cpus_to_the_job_step(script, tmp_path):
    """bash -n, then each sbatch file run as SLURM runs its batch script, with a fake srun on PATH that
    records what it was given: the job's --cpus-per-task reaches the step (srun does not inherit it)."""
    sbatch = ROOT / "scripts" / "slurm" / f"{script}.sbatch"
    assert subprocess.run(["bash", "-n", str(sbatch)], capture_output=True).returncode == 0
    lines = sbatch.read_text().splitlines()
    directives = [line for line in lines if line.startswith("#SBATCH ")]
    assert {"--cpus-per-task=64", "--signal=USR1@300"} <= {d.split()[1] for d in directives}
    assert {"--partition", "--account", "--gres"} <= {line.split()[1].split("=")[0] for line in lines
                                                      if line.startswith("##SBATCH ")}  # the cluster's own, commented
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$RECORD"\n')
    (fake / "srun").chmod(0o755)
    record = tmp_path / "srun-args"
    env = {**script_env({}), "PATH": f"{fake}:{script_env({})['PATH']}", "RECORD": str(record),
           "SLURM_CPUS_PER_TASK": "64", "SLURM_JOB_ID": "42"}
    result = subprocess.run(["bash", str(sbatch), "--max_steps", "5"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    args = record.read_text().splitlines()
    assert args[:2] == ["--kill-on-bad-exit=1", "--cpus-per-task=64"], args
    assert args[2:] == ["bash", f"scripts/{script}.sh", "--resume_from_checkpoint", "auto", "--max_steps", "5"], args


def test_the_launch_line_says_the_cpus_and_warns_when_ranks_and_workers_outnumber_them(tmp_path):
    body = 'source scripts/lib/launch.sh && dry_run=0 && cpu_report "$@"'
    run = lambda workers: subprocess.run(["bash", "-c", body, "x", "--dataloader_num_workers", workers],
                                         env=script_env({"NUM_GPUS": "2", "GLOBAL_BATCH": "8", "PER_DEVICE_BATCH": "4", "ZERO": "2"}),
                                         cwd=ROOT, capture_output=True, text=True)
    cpus = len(os.sched_getaffinity(0))
    quiet, crowded = run("0"), run(str(cpus))
    assert f"launch: {cpus} CPUs for this node's 2 rank(s), each with 0 data worker(s)" in quiet.stdout
    assert "warning" not in quiet.stderr or cpus < 2
    assert f"2 rank(s) x (1 + {cpus} workers) = {2 * (1 + cpus)} processes share {cpus} CPUs" in crowded.stderr


@pytest.mark.parametrize("capability, flags", [((7, 0), ["--fp16", "True"]), ((7, 5), ["--fp16", "True"]),
                                               ((8, 0), ["--bf16", "True", "--tf32", "True"]),
                                               ((9, 0), ["--bf16", "True", "--tf32", "True"])])
def test_each_rank_picks_the_precision_its_gpu_has(capability, flags, monkeypatch):
    """V100 / T4 (7.x) have neither bf16 nor tf32, which TrainingArguments refuses: fp16 there; a
    flag the command gives wins; without CUDA, fp32 whatever was given."""
    import torch

    from llava_moslora.train import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert main.adapt_to_machine(["--output_dir", "x"]) == flags + ["--output_dir", "x"]
    assert main.adapt_to_machine(["--fp16", "True"]) == ["--fp16", "True"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--bf16" not in main.adapt_to_machine(["--bf16", "True", "--output_dir", "x"])


def test_the_gpu_count_leaves_out_mig_lines_and_a_node_without_gpus_gets_no_precision_flags(tmp_path):
    """nvidia-smi -L on a MIG node lists each GPU then its MIG devices, indented; the launching
    shell passes no precision (a login node without GPUs would otherwise leave GPU ranks in fp32)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text('#!/usr/bin/env bash\ncat <<EOF\n'
                                     'GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-aaaa)\n'
                                     '  MIG 3g.40gb     Device  0: (UUID: MIG-bbbb)\n'
                                     '  MIG 3g.40gb     Device  1: (UUID: MIG-cccc)\n'
                                     'GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-dddd)\nEOF\n')
    (fake / "nvidia-smi").chmod(0o755)
    env = {k: v for k, v in script_env({"GLOBAL_BATCH": "8", "PER_DEVICE_BATCH": "4", "ZERO": "2"}).items()
           if k not in ("NUM_GPUS", "CUDA_VISIBLE_DEVICES")}
    env["PATH"] = f"{fake}:{env['PATH']}"
    shown = subprocess.run(["bash", "-c", 'source scripts/lib/launch.sh && echo "gpus=$NUM_GPUS" && printf "%s\\n" "${LAUNCH[@]}"'],
                           env=env, cwd=ROOT, capture_output=True, text=True)
    assert "gpus=2" in shown.stdout, shown.stdout + shown.stderr
    assert "--bf16" not in shown.stdout and "--tf32" not in shown.stdout
