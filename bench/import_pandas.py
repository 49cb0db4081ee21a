"""Side-by-side for `whetstone bench import`: the same generated 1M-row CSV read by pandas
(every column as text, as Whetstone stores it) and filtered by the same case-insensitive regex.

    python bench/import_pandas.py --rows 1000000
"""
import argparse, os, tempfile, time

import pandas as pd

QUESTIONS = [
    "Crushing chest pain spreading to the left arm",
    "Mild sore throat for two days, no fever",
    'Fever, "stiff neck" and a new rash',
    "Twisted ankle, can walk with a limp",
    "发烧三天，头痛",
]
DEPTS = ["cardio", "gp", "neuro", "ortho", "gp"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--pattern", default="chest pain|stiff neck")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "triage.csv")
        with open(path, "w", encoding="utf-8") as f:
            f.write("id,question,answer,department\n")
            for i in range(a.rows):
                k = i % len(QUESTIONS)
                q = QUESTIONS[k].replace('"', '""')
                f.write(f'{i},"{q} (case {i})","Advice {i % 97}, see notes",{DEPTS[k]}\n')
        t0 = time.perf_counter()
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pq = os.path.join(d, "v1.parquet")
        df.to_parquet(pq)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        mask = None
        for c in df.columns:
            m = df[c].str.contains(a.pattern, case=False, regex=True)
            mask = m if mask is None else (mask | m)
        filt_s = time.perf_counter() - t0
        n = len(df)
        print(f"pandas {pd.__version__}: {n} rows")
        print(f"read_csv (all text)   {read_s:.3f} s  → {n / read_s:.0f} rows/s")
        print(f"read + to_parquet     {read_s + write_s:.3f} s  → {n / (read_s + write_s):.0f} rows/s")
        print(f"regex filter          {filt_s:.3f} s  → {n / filt_s:.0f} rows/s ({int(mask.sum())} matches)")


if __name__ == "__main__":
    main()
