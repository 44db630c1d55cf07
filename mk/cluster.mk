# The cluster test tier: a real Slurm (slurmctld, slurmd, munge, slurmdbd + MariaDB) and Lmod.
# tests/infra/cluster.py starts a private copy per test session and stops it by PID.
.PHONY: cluster-installed cluster-shell
TEST_DEPS += cluster-installed
cluster-installed:
	bash tests/infra/install-cluster.sh

# A shell on a fresh private cluster (stopped when the shell exits); for trying job scripts by hand.
cluster-shell: venv cluster-installed
	$(BIN)/python tests/infra/cluster.py
