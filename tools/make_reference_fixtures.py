"""Makes tests/fixtures/*.npz: the reference networks' outputs for the converter tests.

Needs torch and checkouts of the public reference repositories (not run by CI; the tests
read the fixtures without either):

  pip install torch numpy scipy requests
  python tools/make_reference_fixtures.py \
      --stylegan2=/path/to/NVlabs/stylegan2-ada-pytorch --biggan=/path/to/ajbrock/BigGAN-PyTorch

Each backbone runs in a process of its own (the two repositories' top-level modules would
otherwise share one import namespace). The outputs are deterministic (seeded).
"""

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--stylegan2", default="/root/refs/NVlabs+stylegan2-ada-pytorch",
                 help="a stylegan2-ada-pytorch checkout")
  p.add_argument("--biggan", default="/root/refs/ajbrock+BigGAN-PyTorch",
                 help="a BigGAN-PyTorch checkout")
  p.add_argument("--out", default=OUT)
  p.add_argument("--only", choices=["stylegan2", "biggan"], default=None)
  args = p.parse_args()
  jobs = {
      "stylegan2": f"import fixtures_stylegan2 as m; r = m.make({args.out!r}, "
                   f"{args.stylegan2!r}); print('\\n'.join(str(x) for x in r))",
      "biggan": f"import fixtures_biggan as m; r = m.make({args.out!r}, {args.biggan!r}); "
                f"print('\\n'.join(str(x) for x in r))",
  }
  os.makedirs(args.out, exist_ok=True)
  for name, code in jobs.items():
    if args.only and name != args.only:
      continue
    print(f"[{name}]", flush=True)
    subprocess.run([sys.executable, "-c", code], cwd=HERE, check=True)
  total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out)
              if f.endswith(".npz"))
  print(f"fixtures: {total / 2 ** 20:.2f} MiB in {os.path.abspath(args.out)}")


if __name__ == "__main__":
  main()
