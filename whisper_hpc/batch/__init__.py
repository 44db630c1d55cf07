"""whisper-batch: many files through whisper-hpc as a Slurm array job; status and resume.

manifest.py   the batch's JSON record          plan.py    memory, time and chunks
selection.py  files, transcript names, done    slurm.py   sbatch / squeue / sacct
task.py       one array task (one model load)  status.py  done / failed / running / pending
cli.py        the command line
"""
