"""Checkpoint loading benchmark: load time and peak host memory, one fresh process per load.

Each measurement runs in its own subprocess, so `ru_maxrss` (the kernel's peak resident set
for the process) belongs to that load alone. Measurements:

    llm_fp32, llm_bf16   SpeechLM.from_checkpoint (the 6.2 GB Llama LM) in float32 / bfloat16
    flow                 FlowDecoder.from_checkpoint (DiT)
    speech_tokenizer     SpeechTokenizer.from_checkpoint (Whisper-VQ encoder)
    hift                 HiFT.from_checkpoint (24 kHz vocoder)
    engine_fp32/_bf16    GlmTtsEngine.load: every model, as `glmtts-batch run` loads them

For each: wall time of the load call, peak RSS of the process and its growth over the
post-import baseline, RSS right after the load and after touching every weight once (what
the first inference would fault in), the anonymous vs file-backed split of that RSS (from
/proc/self/status, sampled every 20 ms during the load for the peaks), the bytes the loaded
module holds, and the checkpoint file sizes for comparison.

safetensors maps files on CPU, so a float32 load adopts file-backed pages: they count as RSS
only once touched, and the kernel can drop them under memory pressure (they are clean page
cache). A dtype conversion reads every page once and writes a new anonymous copy.

    python bench/bench_load.py --preset full            # builds the checkpoint if missing
    python bench/bench_load.py --preset full --cold     # evict the files from page cache first
    python bench/bench_load.py --preset tiny --only llm_fp32,engine_fp32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEASUREMENTS = ("llm_fp32", "llm_bf16", "flow", "speech_tokenizer", "hift", "engine_fp32", "engine_bf16")
GIB = 2**30


# ---------------------------------------------------------------------------------------------
# Child side: one load in this process


def _status_kib() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile (KiB) of this process from /proc/self/status."""
    wanted = {"VmRSS", "RssAnon", "RssFile", "RssShmem"}
    values: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in wanted:
                values[key] = int(rest.split()[0])
    return values


def _status_gib() -> dict[str, float]:
    return {k: round(v / 2**20, 3) for k, v in _status_kib().items()}


def _ru_maxrss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class _PeakSampler:
    """Samples /proc/self/status in a thread to split the peak into anonymous and file pages.

    ru_maxrss is exact but only gives the total; the sampler may miss a peak shorter than its
    period, so it is a lower bound on the split, not a replacement for ru_maxrss.
    """

    def __init__(self, period_s: float = 0.02) -> None:
        self.period_s = period_s
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in _status_kib().items():
                self.peak[key] = max(self.peak.get(key, 0), value)
            self._stop.wait(self.period_s)

    def __enter__(self) -> _PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for key, value in _status_kib().items():
            self.peak[key] = max(self.peak.get(key, 0), value)

    def peak_gib(self) -> dict[str, float]:
        return {k: round(v / 2**20, 3) for k, v in self.peak.items()}


def _module_bytes(modules: list) -> int:
    """Bytes of every distinct parameter and buffer storage held by the given modules."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                continue
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def _touch(modules: list) -> None:
    """Read every weight once, as the first inference would (faults in mapped pages)."""
    import torch

    with torch.no_grad():
        for module in modules:
            for t in list(module.parameters()) + list(module.buffers()):
                if t.numel():
                    t.float().sum() if t.dtype != torch.float32 and t.is_floating_point() else t.sum()


def _child(name: str, checkpoint_dir: Path, threads: int | None, device: str) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    sys.path.insert(0, str(REPO))
    from glmtts_batch.engines.base import EngineOptions
    from glmtts_batch.glmtts.checkpoint import validate_checkpoint_dir
    from glmtts_batch.glmtts.engine import GlmTtsEngine
    from glmtts_batch.glmtts.flow import FlowDecoder
    from glmtts_batch.glmtts.hift import HiFT
    from glmtts_batch.glmtts.llm import SpeechLM
    from glmtts_batch.glmtts.speech_tokenizer import SpeechTokenizer

    layout = validate_checkpoint_dir(checkpoint_dir)
    import transformers.models.llama.modeling_llama  # noqa: F401 - import cost out of the timing

    baseline = _status_gib()
    baseline_peak = _ru_maxrss_gib()
    engine = None
    with _PeakSampler() as sampler:
        started = time.perf_counter()
        if name.startswith("llm_"):
            modules = [
                SpeechLM.from_checkpoint(
                    layout.llm_dir, device, torch.float32 if name == "llm_fp32" else torch.bfloat16
                )
            ]
        elif name == "flow":
            modules = [FlowDecoder.from_checkpoint(layout.flow_weights, device, config_path=layout.flow_config)]
        elif name == "speech_tokenizer":
            modules = [SpeechTokenizer.from_checkpoint(layout.speech_tokenizer_dir, device).encoder]
        elif name == "hift":
            modules = [HiFT.from_checkpoint(layout.vocoder_weights(24000), device)]
        elif name.startswith("engine_"):
            options = EngineOptions(model_dir=checkpoint_dir, device=device, dtype=name.removeprefix("engine_"))
            engine = GlmTtsEngine.load(options, log=lambda _m: None)
            m = engine.models
            modules = [m.llm, m.flow, m.speech_tokenizer.encoder, m.vocoder]
        else:
            raise SystemExit(f"unknown measurement {name!r}")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        load_s = time.perf_counter() - started
    peak_after_load = _ru_maxrss_gib()
    after_load = _status_gib()
    touch_started = time.perf_counter()
    _touch(modules)
    touch_s = time.perf_counter() - touch_started
    after_touch = _status_gib()
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for mod in modules for p in mod.parameters()})
    return {
        "name": name,
        "load_s": round(load_s, 2),
        "module_gib": round(_module_bytes(modules) / GIB, 3),
        "param_dtypes": dtypes,
        "baseline_rss_gib": baseline["VmRSS"],
        "peak_rss_gib": round(peak_after_load, 3),  # ru_maxrss: exact, whole process
        "peak_rss_growth_gib": round(peak_after_load - max(baseline_peak, baseline["VmRSS"]), 3),
        "sampled_peak_gib": sampler.peak_gib(),  # VmRSS / RssAnon / RssFile peaks, 20 ms sampling
        "after_load_gib": after_load,
        "after_touch_gib": after_touch,
        "touch_s": round(touch_s, 2),
        "peak_rss_gib_incl_touch": round(_ru_maxrss_gib(), 3),
        "device": device,
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / GIB, 3) if device.startswith("cuda") else None,
    }


# ---------------------------------------------------------------------------------------------
# Parent side: checkpoint, subprocesses, table


def _file_sizes(checkpoint_dir: Path) -> dict[str, float]:
    def size(paths: list[Path]) -> float:
        return round(sum(p.stat().st_size for p in paths if p.is_file()) / GIB, 3)

    root = checkpoint_dir
    comp = {
        "llm": size(sorted((root / "llm").glob("*.safetensors"))),
        "flow": size([root / "flow" / "flow.pt"]),
        "speech_tokenizer": size([root / "speech_tokenizer" / "model.safetensors"]),
        "hift": size([root / "hift" / "hift.pt"]),
    }
    comp["total"] = size([p for p in root.rglob("*") if p.is_file()])
    return comp


def _evict(checkpoint_dir: Path) -> None:
    """Drop this checkpoint's pages from the page cache (POSIX_FADV_DONTNEED), files only."""
    for path in checkpoint_dir.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _measure(name: str, checkpoint_dir: Path, args: argparse.Namespace) -> dict:
    if args.cold:
        _evict(checkpoint_dir)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--checkpoint-dir", str(checkpoint_dir)]
    cmd += ["--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"name": name, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:], "rc": proc.returncode}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - started, 2)
    return result


def _table(results: list[dict], sizes: dict[str, float]) -> str:
    head = (
        f"{'load':<17}{'file GiB':>9}{'module GiB':>11}{'load s':>8}{'peak RSS':>10}{'growth':>8}"
        f"{'anon pk':>9}{'file pk':>9}{'RSS load':>10}{'touch s':>9}{'RSS touch':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['name']:<17} FAILED rc={r['rc']}: {r['error']}")
            continue
        component = r["name"].removesuffix("_fp32").removesuffix("_bf16")
        fsize = sizes.get(component, sizes["total"] if component == "engine" else 0.0)
        pk = r["sampled_peak_gib"]
        lines.append(
            f"{r['name']:<17}{fsize:>9.3f}{r['module_gib']:>11.3f}{r['load_s']:>8.2f}{r['peak_rss_gib']:>10.3f}"
            f"{r['peak_rss_growth_gib']:>8.3f}{pk.get('RssAnon', 0):>9.3f}{pk.get('RssFile', 0):>9.3f}"
            f"{r['after_load_gib']['VmRSS']:>10.3f}{r['touch_s']:>9.2f}{r['after_touch_gib']['VmRSS']:>10.3f}"
        )
    lines.append(
        "GiB throughout. peak RSS = ru_maxrss of the load process (includes the ~baseline after imports); "
        "growth = peak minus baseline; anon/file pk = sampled peaks of RssAnon/RssFile; "
        "RSS load = VmRSS right after the load; touch s / RSS touch = time to read every weight once "
        "after the load (what the first inference faults in) and VmRSS after it."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("tiny", "full"), default="full")
    parser.add_argument("--checkpoint-dir", default=None, help="default: bench/checkpoints/<preset>")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(MEASUREMENTS)}")
    parser.add_argument("--cold", action="store_true", help="evict the checkpoint from page cache before each load")
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda: where the weights go (host RSS is measured either way)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in the load processes")
    parser.add_argument("--out", default=str(REPO / "bench" / "out"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    checkpoint_dir = Path(args.checkpoint_dir or REPO / "bench" / "checkpoints" / args.preset)
    if args.child:
        print(json.dumps(_child(args.child, checkpoint_dir, args.threads, args.device)))
        return

    sys.path.insert(0, str(REPO / "bench"))
    sys.path.insert(0, str(REPO))
    from bench_glmtts import ensure_checkpoint

    ensure_checkpoint(args.preset, checkpoint_dir)
    names = args.only.split(",") if args.only else list(MEASUREMENTS)
    unknown = sorted(set(names) - set(MEASUREMENTS))
    if unknown:
        parser.error(f"unknown measurement(s) {unknown}; choose from {', '.join(MEASUREMENTS)}")
    sizes = _file_sizes(checkpoint_dir)
    results = []
    for name in names:
        print(f"loading {name} ...", flush=True)
        result = _measure(name, checkpoint_dir, args)
        results.append(result)
        print(f"  {json.dumps({k: result.get(k) for k in ('load_s', 'peak_rss_gib', 'peak_rss_growth_gib', 'error')})}")

    import torch

    report = {
        "preset": args.preset,
        "checkpoint_dir": str(checkpoint_dir),
        "cold_page_cache": args.cold,
        "device": args.device,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "file_sizes_gib": sizes,
        "loads": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device_tag = "" if args.device == "cpu" else "_" + args.device.replace(":", "")
    path = out / f"load_{args.preset}{device_tag}{'_cold' if args.cold else ''}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(_table(results, sizes))
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
