"""``selfnorm theory`` and ``selfnorm solve``: the SELU theory on the command line."""

from __future__ import annotations

import argparse

from selfnorm.cli.common import CliError
from selfnorm.cli.common import print_json as _print_json


def cmd_theory(args: argparse.Namespace) -> int:
    from selfnorm.constants import ALPHA_01, LAMBDA_01, SATURATION_01
    from selfnorm.theory import check_theorems, fixed_point, jacobian, spectral_norm

    if args.grid < 2:
        raise CliError(f"--grid {args.grid}: pass at least 2 points per axis (default 32)")
    fp = fixed_point(0.0, 1.0)
    jac = jacobian(fp.mean, 0.0, fp.var, 1.0)
    norm = float(spectral_norm(jac))
    checks = check_theorems(points_per_axis=args.grid)
    if args.plot:
        from selfnorm.report.plots import mapping_field_figure, save_figure

        save_figure(mapping_field_figure(), args.plot)
    if args.json:
        _print_json(
            {
                "lambda": LAMBDA_01,
                "alpha": ALPHA_01,
                "saturation": SATURATION_01,
                "fixed_point": {"mean": fp.mean, "var": fp.var},
                "jacobian": jac.tolist(),
                "spectral_norm": norm,
                "theorems": [c.to_dict() for c in checks],
            }
        )
        return 0
    print("SELU constants (derived from the closed form, Eq. 14)")
    print(f"  lambda_01 = {LAMBDA_01:.16f}")
    print(f"  alpha_01  = {ALPHA_01:.16f}")
    print(f"  alpha'    = -lambda*alpha = {SATURATION_01:.16f}")
    print(f"Fixed point of g (omega=0, tau=1): mean = {fp.mean:.3e}, var = {fp.var:.12f}")
    print("Jacobian of g w.r.t. (mu, nu) at the fixed point:")
    for row in jac:
        print("  [" + ", ".join(f"{v:9.6f}" for v in row) + "]")
    print(f"  spectral norm = {norm:.6f} (< 1: the fixed point attracts)")
    print(f"Theorems checked on grids of {args.grid}^4 points:")
    for c in checks:
        where = ", ".join(f"{k}={v:.3g}" for k, v in c.worst_at.items())
        print(
            f"  {c.name}: {'holds' if c.holds else 'FAILS'}; {c.claim}; worst {c.worst:.6f} at "
            f"({where}); {c.grid_size:,} points in {c.seconds:.2f} s"
        )
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def cmd_solve(args: argparse.Namespace) -> int:
    from selfnorm.theory import solve_selu_parameters

    lam, alpha = solve_selu_parameters(args.mean, args.var, convention=args.convention)
    if args.json:
        _print_json({"lambda": lam, "alpha": alpha})
    else:
        print(f"fixed point (mean={args.mean}, var={args.var}), convention={args.convention}")
        print(f"  lambda = {lam:.16f}")
        print(f"  alpha  = {alpha:.16f}")
    return 0


def register(sub) -> None:
    """Add the ``theory`` and ``solve`` subcommands."""
    p = sub.add_parser("theory", help="constants, fixed point, Jacobian, Theorems 1-3 checked")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of g's vector field (Figure 2)")
    p.add_argument(
        "--grid", type=int, default=32, metavar="N", help="grid points per axis (default 32)"
    )
    p.set_defaults(func=cmd_theory)

    p = sub.add_parser("solve", help="SELU (lambda, alpha) for a target fixed point")
    p.add_argument("--mean", type=float, default=0.0, help="fixed-point mean (default 0)")
    p.add_argument("--var", type=float, default=1.0, help="fixed-point variance (default 1)")
    p.add_argument(
        "--convention",
        choices=["paper", "notebook"],
        default="paper",
        help="paper: z ~ N(0, var) (omega=0); notebook: z ~ N(mean, var) (omega=1)",
    )
    p.add_argument("--json", action="store_true", help='print {"lambda": .., "alpha": ..}')
    p.set_defaults(func=cmd_solve)
