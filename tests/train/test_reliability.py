"""Reliability through the launch scripts (2 CPU processes, ZeRO-2): bad data stops a run before
step 1 unless --skip_bad_samples; SIGINT / SIGTERM / SIGUSR1, to the launcher or to every process,
before or during a save, save a resumable checkpoint and end with 128 + the signal; a SIGKILL
during a save leaves the previous checkpoint usable; --resume_from_checkpoint auto continues each
run to the same losses as an uninterrupted one."""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from helpers import ROOT, STEADY, kill_tree, losses, run_script, script_env, signal_tree, stage2_env, write_faulty_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    return write_faulty_dataset(tmp_path_factory.mktemp("faulty"))


def faulty_env(faulty, stage1, out):
    data, images, _ = faulty
    return {**stage2_env(images.parent, stage1, out), "DATA_PATH": str(data), "IMAGE_FOLDER": str(images), "EPOCHS": "1"}


def test_bad_data_stops_the_run_before_step_1_naming_the_samples(faulty, stage1, tmp_path):
    out = tmp_path / "strict"
    result = run_script("finetune.sh", faulty_env(faulty, stage1, out), *STEADY, succeed=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr  # said once, on rank 0
    assert result.stderr.count("found before step 1") == 1
    assert "bad samples in" in result.stderr and "found before step 1" in result.stderr
    for sample_id in ("missing-image", "unreadable-image", "unknown-role", "fully-masked"):
        assert sample_id in result.stderr, sample_id
    assert "--skip_bad_samples" in result.stderr
    assert not list(out.glob("checkpoint-*")) and not (out / "trainer_state.json").exists()


def test_skip_bad_samples_trains_and_counts_what_it_left_out(faulty, stage1, tmp_path):
    out = tmp_path / "skipping"
    result = run_script("finetune.sh", faulty_env(faulty, stage1, out), *STEADY, "--skip_bad_samples", "True")
    # 10 found by the start-up screen; cut.png has a valid header and fails only when drawn
    assert "leaving out 10 bad samples" in result.stdout
    assert "skipped bad samples: 10 before training, 1 during it (drawn" in result.stdout
    assert "times): ['truncated-image']" in result.stdout
    assert "skipping a bad sample" in result.stderr and "truncated-image" in result.stderr
    assert len((out / "skipped_samples.jsonl").read_text().splitlines()) == 10
    assert (out / "trainable.safetensors").is_file() and losses(out)


def start(shapes_data, stage1, out, *extra, **env):
    return subprocess.Popen(["bash", str(ROOT / "scripts" / "finetune.sh"), "--max_steps", "10", *STEADY, *extra],
                            env=script_env({**stage2_env(shapes_data, stage1, out), **env}), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def after_losses(run, count):
    """Read the launcher's output until rank 0 has logged `count` loss lines; the lines read."""
    seen = []
    for line in run.stdout:
        seen.append(line)
        if len([x for x in seen if "'loss'" in x]) >= count:
            break
    return seen


def assert_stopped_by(run, seen, name, out):
    """The run ended with 128 + the signal and a complete checkpoint-N; returns N."""
    output = "".join(seen) + run.communicate(timeout=300)[0]
    assert run.returncode == 128 + getattr(signal, name), (run.returncode, output[-3000:])
    assert "is killed by signal" not in output, output[-3000:]
    assert f"{name} received" in output and f"stopped by {name} at step" in output, output[-3000:]
    assert f"launcher: stopped by {name}" in output or f"the ranks stopped on {name}" in output, output[-3000:]
    step = int(output.split(f"stopped by {name} at step ")[1].split(";")[0])
    assert (out / f"checkpoint-{step}" / "trainer_state.json").is_file()
    assert not (out / "trainable.safetensors").exists()  # the final output is written only when finished
    return step, output


def resume_and_compare(shapes_data, stage1, out, uninterrupted, expected_start, **env):
    result = run_script("finetune.sh", stage2_env(shapes_data, stage1, out, **env), "--max_steps", "10",
                        "--save_steps", "3", "--resume_from_checkpoint", "auto", *STEADY)
    assert f"resuming from {out / f'checkpoint-{expected_start}'}" in result.stdout
    resumed, whole = losses(out), losses(uninterrupted)
    print(f"\nuninterrupted {whole}\nresumed       {resumed}")
    assert len(resumed) == 10
    assert resumed == pytest.approx(whole, rel=1e-3)
    # the record of what was trained on survives the interruption: same samples, same batches
    metrics, whole_metrics = (json.loads((d / "train_metrics.json").read_text()) for d in (out, uninterrupted))
    assert metrics["resumed_from"] == str(out / f"checkpoint-{expected_start}")
    assert metrics["data_order"] == whole_metrics["data_order"]
    assert metrics["tokens"] == whole_metrics["tokens"] and metrics["global_step"] == 10
    if env.get("PACKING") == "1":  # packed against the padded reference: less padding processed
        assert metrics["tokens"] <= metrics["processed_tokens"] < whole_metrics["processed_tokens"]
    else:
        assert metrics["processed_tokens"] == whole_metrics["processed_tokens"] >= metrics["tokens"]
    assert metrics["processed_per_real_token"] == round(metrics["processed_tokens"] / metrics["tokens"], 4)


def test_sigint_to_the_launcher_only_saves_and_auto_resume_matches(shapes_data, stage1, uninterrupted, tmp_path):
    """Ctrl-C reaches the launcher (the terminal's foreground group); torchrun forwards it to the
    ranks, which torchrun started in sessions of their own."""
    out = tmp_path / "sigint"
    run = start(shapes_data, stage1, out, "--save_steps", "1000")
    seen = after_losses(run, 3)
    run.send_signal(signal.SIGINT)
    step, _ = assert_stopped_by(run, seen, "SIGINT", out)
    assert 3 <= step < 10
    resume_and_compare(shapes_data, stage1, out, uninterrupted, step)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_signal_to_every_process_with_workers_saves_and_resumes(name, shapes_data, stage1, uninterrupted, tmp_path):
    """As SLURM's scancel / time limit / --signal, Kubernetes and `timeout` deliver it: every
    process of the run (launcher, ranks, data-loader workers) gets the signal, then torchrun
    forwards it again. SIGUSR1 (SLURM's warning before the time limit) saves and stops too."""
    out = tmp_path / name
    run = start(shapes_data, stage1, out, "--save_steps", "1000", "--dataloader_num_workers", "2")
    seen = after_losses(run, 3)
    tree = signal_tree(run.pid, getattr(signal, name))
    assert len(tree) >= 7  # launcher, 2 ranks, 2 workers each
    step, output = assert_stopped_by(run, seen, name, out)
    assert 3 <= step < 10
    # the batches were collated in the workers; the summary still counts what rank 0 trained on
    # (it said 0: the collator's counts stayed in the workers)
    counted = int(output.split("data: {'samples': ")[1].split(",")[0])
    assert 4 * (step - 1) < counted <= 4 * step, output[-3000:]
    resume_and_compare(shapes_data, stage1, out, uninterrupted, step)


# Slowest ten of the suite (CI, 2 cores): ~36 s. A 2-process run signalled while it writes, then resumed to
# the uninterrupted losses: a save interrupted mid-write is the cluster failure it guards against.
def test_signal_during_a_save_finishes_it_then_saves_the_next_step(shapes_data, stage1, uninterrupted, tmp_path):
    """SIGTERM to every process while the ranks are writing checkpoint-6: that save completes,
    the next step runs, and its checkpoint is the one to resume from."""
    out, marker = tmp_path / "mid-save", tmp_path / "saving-step-6"
    instrumentation = tmp_path / "instrumentation"
    instrumentation.mkdir()
    shutil.copy(ROOT / "tests" / "train" / "slow_save.py", instrumentation / "sitecustomize.py")
    run = start(shapes_data, stage1, out, "--save_steps", "3", "--dataloader_num_workers", "2",
                LLAVA_MOSLORA_TEST_SLOW_SAVE=f"6:{marker}:5",
                PYTHONPATH=f"{instrumentation}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    seen = after_losses(run, 6)
    deadline = time.time() + 300
    while not marker.exists():
        assert run.poll() is None and time.time() < deadline
        time.sleep(0.1)
    signal_tree(run.pid, signal.SIGTERM)
    step, output = assert_stopped_by(run, seen, "SIGTERM", out)
    assert step == 7, output[-3000:]
    assert not list((out / ".staging").glob("checkpoint-*"))  # both saves completed
    resume_and_compare(shapes_data, stage1, out, uninterrupted, 7)


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_to_resume_from(shapes_data, stage1, uninterrupted,
                                                                             tmp_path):
    out, marker = tmp_path / "sigkill", tmp_path / "saving-step-6"
    instrumentation = tmp_path / "instrumentation"
    instrumentation.mkdir()
    shutil.copy(ROOT / "tests" / "train" / "slow_save.py", instrumentation / "sitecustomize.py")
    run = start(shapes_data, stage1, out, "--save_steps", "3", LLAVA_MOSLORA_TEST_SLOW_SAVE=f"6:{marker}",
                PYTHONPATH=f"{instrumentation}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    deadline = time.time() + 600
    while not marker.exists():
        assert run.poll() is None and time.time() < deadline, run.communicate()[0][-3000:]
        time.sleep(0.2)
    kill_tree(run.pid)  # launcher and both ranks, in the middle of saving step 6
    run.communicate(timeout=60)
    assert (out / ".staging" / "checkpoint-6").is_dir()  # the half-written one stayed out of the way
    assert not (out / "checkpoint-6").exists() and (out / "checkpoint-3" / "trainer_state.json").is_file()
    resume_and_compare(shapes_data, stage1, out, uninterrupted, 3)


def test_auto_resume_picks_the_newest_complete_checkpoint(tmp_path):
    from llava_moslora.train.main import newest_checkpoint, resolve_resume

    assert resolve_resume("auto", str(tmp_path / "absent"), verbose=False) is None
    for step, complete in ((3, True), (12, True), (20, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / ".staging" / "checkpoint-30").mkdir(parents=True)
    (tmp_path / "checkpoint-final").mkdir()
    assert newest_checkpoint(str(tmp_path)) == tmp_path / "checkpoint-12"  # not 3 (older), 20 (incomplete)
    (tmp_path / "checkpoint-12" / "trainable.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{")  # cut short
    skipped = []
    assert newest_checkpoint(str(tmp_path), skipped) == tmp_path / "checkpoint-3"  # 12 is damaged: passed over
    assert skipped[0][0] == tmp_path / "checkpoint-12" and "trainable.safetensors" in skipped[0][1][0]
    assert resolve_resume(str(tmp_path / "checkpoint-3"), str(tmp_path), verbose=False) == str(tmp_path / "checkpoint-3")


def test_auto_resume_passes_over_a_damaged_newest_checkpoint(shapes_data, stage1, uninterrupted, tmp_path):
    """The newest checkpoint's trainable.safetensors cut short (a disk or copy fault): auto says
    so and resumes from the one before, to the uninterrupted run's losses."""
    out = tmp_path / "damaged"
    for step in (3, 6):  # a run stopped after its step-6 save
        shutil.copytree(uninterrupted / f"checkpoint-{step}", out / f"checkpoint-{step}")
    newest = out / "checkpoint-6" / "trainable.safetensors"
    newest.write_bytes(newest.read_bytes()[:40])
    resume_and_compare(shapes_data, stage1, out, uninterrupted, 3)


def test_a_full_disk_stops_the_run_cleanly_and_the_previous_checkpoint_resumes(shapes_data, stage1, uninterrupted,
                                                                              tmp_path):
    """On a small file system of its own (a 256 MB tmpfs), a run holds checkpoint-3; the disk is
    then filled to within 64 KB, and the run continued from there fails to save checkpoint-6: it
    stops saying the disk is full, the partial checkpoint is removed, checkpoint-3 stays sound,
    and once space is freed it resumes to the uninterrupted run's losses."""
    import os
    import subprocess

    from llava_moslora.model.checkpoint import unreadable_files

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small file system here (needs root): {mounted.stderr.strip()}")
    try:
        out = disk / "out"
        shutil.copytree(uninterrupted / "checkpoint-3", out / "checkpoint-3")  # a run stopped after its step-3 save
        filler = disk / "filler"
        with open(filler, "wb") as handle:  # the disk fills up (another job, logs, a dataset copy)
            handle.truncate(os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - (64 << 10))
            os.posix_fallocate(handle.fileno(), 0, handle.seek(0, 2))
        result = run_script("finetune.sh", stage2_env(shapes_data, stage1, out), "--max_steps", "10", "--save_steps",
                            "3", "--resume_from_checkpoint", "auto", *STEADY, succeed=False)
        assert result.returncode == 2, result.stderr[-3000:]
        assert "saving checkpoint-6 failed: the disk is full" in result.stderr, result.stderr[-3000:]
        assert f"{out / 'checkpoint-3'} is intact" in result.stderr and "Traceback" not in result.stderr
        assert not (out / ".staging" / "checkpoint-6").exists()  # the partial checkpoint was removed
        assert unreadable_files(out / "checkpoint-3") == []
        filler.unlink()  # space freed
        resume_and_compare(shapes_data, stage1, out, uninterrupted, 3)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_run_killed_after_its_timed_checkpoint_resumes_to_the_same_losses(shapes_data, stage1, uninterrupted,
                                                                           tmp_path):
    """SAVE_MINUTES (here 0.6 s) writes checkpoints with no --save_steps due; SIGKILL to every
    process after the first leaves it to resume from, to the uninterrupted run's losses."""
    out = tmp_path / "timed"
    run = start(shapes_data, stage1, out, "--save_steps", "100", SAVE_MINUTES="0.01")
    for line in run.stdout:  # read as it comes (a full pipe would stall the run)
        if list(out.glob("checkpoint-*/trainer_state.json")):
            break
    kill_tree(run.pid)
    run.communicate(timeout=60)
    saved = sorted(int(p.parent.name.split("-")[1]) for p in out.glob("checkpoint-*/trainer_state.json"))
    assert saved and saved[-1] < 10, saved
    resume_and_compare(shapes_data, stage1, out, uninterrupted, saved[-1])
