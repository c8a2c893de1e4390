"""``fleettwin data catalog``: print the GPU and LLM catalogs with the quantities derived from them."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from fleettwin.models.catalog import Catalog
from fleettwin.models.errors import ConfigError
from fleettwin.models.sizing import kv_cache_blocks, min_tensor_parallel


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "catalog",
        help="list the GPUs and LLMs scenarios can name",
        description=(
            "List the GPU and LLM catalogs shipped with fleettwin (sources in models/data/SOURCES.md). "
            "`gpus` shows specs and prices per GPU-hour; `models` shows each LLM's shapes and, for the GPU "
            "given with --gpu, the smallest tensor-parallel size that fits it and the KV blocks such a "
            "replica holds."
        ),
    )
    parser.add_argument("what", choices=["gpus", "models"], help="which catalog to print")
    parser.add_argument(
        "--gpu", default="h100-80g", help="GPU id for the sizing columns of `models` (default %(default)s)"
    )
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.9,
        metavar="FRACTION",
        help="share of GPU memory vLLM may use, as its flag of the same name (default %(default)s)",
    )
    parser.add_argument(
        "--block-size", type=int, default=16, help="KV block size in tokens (default %(default)s)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.gpu_memory_utilization <= 1:
        raise ConfigError(f"--gpu-memory-utilization must be in (0, 1], got {args.gpu_memory_utilization}")
    if args.block_size < 1:
        raise ConfigError(f"--block-size must be >= 1, got {args.block_size}")
    catalog = Catalog.default()
    table = (
        gpu_table(catalog)
        if args.what == "gpus"
        else model_table(
            catalog, args.gpu, gpu_memory_utilization=args.gpu_memory_utilization, block_size=args.block_size
        )
    )
    console = Console()
    if not console.is_terminal:  # piped or captured: print whole rows rather than wrap at 80 columns
        console = Console(width=200)
    console.print(table)
    return 0


def _table(title: str, columns: tuple[str, ...]) -> Table:
    """A catalog table: the id column left-aligned and never wrapped, the numbers right-aligned."""
    table = Table(title=title)
    for name in columns:
        table.add_column(name, justify="left" if name == "id" else "right", no_wrap=name == "id")
    return table


def gpu_table(catalog: Catalog) -> Table:
    columns = (
        "id",
        "memory GB",
        "HBM TB/s",
        "BF16 TFLOP/s",
        "FP8 TFLOP/s",
        "link GB/s (both ways)",
        "TDP W",
        "on-demand $/h",
        "spot $/h",
        "ridge FLOP/B",
    )
    table = _table("GPUs (prices: USD per GPU-hour, ±40 %; * = spot estimated as 0.5 × on-demand)", columns)
    for g in catalog.gpus.values():
        table.add_row(
            g.id,
            f"{g.memory_gb:g}",
            f"{g.hbm_tbps:g}",
            f"{g.bf16_tflops:g}",
            "—" if g.fp8_tflops is None else f"{g.fp8_tflops:g}",
            f"{g.interconnect_gbps:g}{'' if g.has_nvlink else ' PCIe'}",
            f"{g.tdp_w:g}",
            f"{g.price_on_demand_usd_h:.2f}",
            f"{g.price_spot_usd_h:.2f}{'*' if g.spot_price_estimated else ''}",
            f"{g.ridge_flops_per_byte:.0f}",
        )
    return table


def model_table(catalog: Catalog, gpu_id: str, *, gpu_memory_utilization: float, block_size: int) -> Table:
    gpu = catalog.gpu(gpu_id)
    columns = (
        "id",
        "params B",
        "active B",
        "layers",
        "hidden",
        "heads/KV",
        "experts",
        "context",
        "weights GB",
        "KV KiB/token",
        "min TP",
        "KV blocks",
        "KV tokens",
    )
    title = (
        f"LLMs (BF16) — sizing on {gpu.id} at gpu_memory_utilization {gpu_memory_utilization}, "
        f"blocks of {block_size} tokens"
    )
    table = _table(title, columns)
    for m in catalog.llms.values():
        try:
            tp = min_tensor_parallel(gpu, m, gpu_memory_utilization=gpu_memory_utilization)
            blocks = kv_cache_blocks(
                gpu, m, tp, gpu_memory_utilization=gpu_memory_utilization, block_size=block_size
            )
            sizing = [str(tp), f"{blocks:,}", f"{blocks * block_size:,}"]
        except ConfigError:
            sizing = ["does not fit", "—", "—"]
        table.add_row(
            m.id,
            f"{m.params_b:g}",
            f"{m.active_params / 1e9:.2f}",
            str(m.num_layers),
            str(m.hidden_size),
            f"{m.num_attention_heads}/{m.num_key_value_heads}",
            f"{m.experts_per_token} of {m.num_experts}" if m.is_moe else "—",
            f"{m.max_context:,}",
            f"{m.weight_bytes() / 1e9:.1f}",
            f"{m.kv_bytes_per_token() / 1024:g}",
            *sizing,
        )
    return table
