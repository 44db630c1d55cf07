"""`whisper-batch report`: one page on how a batch went, for the researcher and the admin.

    data.py       gather(): the manifest, the file states, the transcripts' timings, sacct's
                  accounting and the tasks' resource samples, as one BatchReport
    samples.py    a tolerant reader of the tasks' samples-S-T.tsv files
    resources.py  CPU efficiency and memory peak against request, with the advice
    units.py      sizes and durations as people read them (and as --mem takes them)
    text.py       the text summary (for the Slurm log)
    plots.py      the figures (matplotlib, Agg; imported only when drawing)
    html.py       one self-contained HTML page: inline CSS, PNGs as data: URIs, nothing fetched

Nothing here imports matplotlib at import time: `whisper-batch --help` stays instant.
"""
