"""Beyond one machine: the same lock, environment and weights on every node of a Slurm job.

`render` makes the sbatch script and the launcher line, `node` runs the stages on one node and
writes its report, `lease` is the lock that holds on a shared (NFS) file system, `submit` hands
the script to sbatch and follows it, `plan` is the multi-node arithmetic `check --nodes` uses.
"""
