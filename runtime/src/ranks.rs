//! Where this process runs in a launch (its rank, the world size, its rank on the node): the one
//! place that reads the launcher's variables. Which device it computes on is `crate::device`.
//!
//! `syncdiff-train` learns its rank from MPI itself (`dist::Runtime`) and then takes its device
//! from `device::DeviceChoice::resolve` like everyone else; data preparation and generation,
//! which do not start MPI, read the launcher's environment here: OpenMPI (`OMPI_COMM_WORLD_*`),
//! MPICH and Intel MPI (`PMI_*`, `MPI_LOCAL*`), PMIx (`PMIX_RANK`) and SLURM (`SLURM_PROCID`,
//! ...).

/// Why this process cannot find its place in a SLURM job array.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RanksError {
    /// A job-array variable is missing.
    #[error("{name} is not set (SLURM_ARRAY_TASK_ID={id})")]
    Missing {
        /// The variable.
        name: String,
        /// The task's id.
        id: String,
    },
    /// A job-array variable does not parse.
    #[error("{name}={value:?}: expected a non-negative integer")]
    Invalid {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
    },
    /// The array's ids are not one evenly spaced range.
    #[error(
        "job array task {id} of {count} (min {min}, max {max}, step {step}): the array is not \
         one evenly spaced range, so its tasks cannot split the work; submit --array=A-B or A-B:S \
         (rerun single tasks of it with --dependency, or all of it: finished work is kept)"
    )]
    UnevenArray {
        /// The task's id.
        id: usize,
        /// Tasks in the array.
        count: usize,
        /// Smallest id.
        min: usize,
        /// Largest id.
        max: usize,
        /// Step between ids.
        step: usize,
    },
}

/// This process's place in a launch (one process when no launcher set anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranks {
    /// Rank among all processes, `0..world`.
    pub rank: usize,
    /// Number of processes.
    pub world: usize,
    /// Rank among the processes on this node.
    pub local_rank: usize,
    /// Processes on this node.
    pub local_size: usize,
}

impl Ranks {
    /// From this process's environment; an error names a SLURM job-array variable that cannot be
    /// turned into a place among the array's tasks.
    pub fn from_env() -> Result<Self, RanksError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// From variables looked up by `get` (the first launcher variable that parses wins).
    ///
    /// SLURM's task variables count only inside a job step (`srun`, where `SLURM_STEP_ID` is set):
    /// a batch script also sees `SLURM_NTASKS` (the allocation's) and `SLURM_PROCID=0`, but it is
    /// one process. In a job array (`sbatch --array=A-B[:S]`) each array task is one more level:
    /// task i of C with W processes of its own holds ranks `i*W .. i*W+W` of `C*W`, so an array
    /// of single-process tasks splits the work like `mpirun -n C` would.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, RanksError> {
        let first = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| get(n)?.trim().parse::<usize>().ok())
        };
        let in_step = get("SLURM_STEP_ID").is_some();
        let slurm = |name: &'static str| if in_step { Some(name) } else { None };
        let names = |fixed: &[&'static str], slurm_name: &'static str| {
            let mut v = fixed.to_vec();
            v.extend(slurm(slurm_name));
            v
        };
        let world = first(&names(
            &["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"],
            "SLURM_NTASKS",
        ))
        .unwrap_or(1)
        .max(1);
        let rank = first(&names(
            &["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"],
            "SLURM_PROCID",
        ))
        .unwrap_or(0)
        .min(world - 1);
        let local_size = first(&names(
            &["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"],
            "SLURM_NTASKS_PER_NODE",
        ))
        .unwrap_or(world)
        .clamp(1, world);
        let local_rank = first(&names(
            &["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"],
            "SLURM_LOCALID",
        ))
        .unwrap_or(0)
        .min(local_size - 1);
        let (task, tasks) = array_task(&get)?;
        Ok(Self {
            rank: task * world + rank,
            world: tasks * world,
            local_rank,
            local_size,
        })
    }

    /// libtorch threads for a rank computing on the CPU: [`cpu_threads_per_rank`].
    pub fn cpu_threads(&self) -> usize {
        cpu_threads_per_rank(self.local_size)
    }
}

/// libtorch threads for each of `local_size` ranks on one node computing on the CPU: the
/// node's cores shared among them, at least one.
pub fn cpu_threads_per_rank(local_size: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / local_size.max(1)).max(1)
}

/// This job-array task's index among the array's tasks and their number, `(0, 1)` outside an
/// array. Indices map to `0..count` through `(id - min) / step`; a list that is not one evenly
/// spaced range (`--array=1,4,5`) cannot be mapped and is an error, as is a variable that does not
/// parse.
fn array_task(get: &impl Fn(&str) -> Option<String>) -> Result<(usize, usize), RanksError> {
    let Some(id) = get("SLURM_ARRAY_TASK_ID") else {
        return Ok((0, 1));
    };
    let var = |name: &str| -> Result<usize, RanksError> {
        let v = get(name).ok_or_else(|| RanksError::Missing {
            name: name.into(),
            id: id.clone(),
        })?;
        v.trim().parse().map_err(|_| RanksError::Invalid {
            name: name.into(),
            value: v.clone(),
        })
    };
    let id = var("SLURM_ARRAY_TASK_ID")?;
    let (min, max, count) = (
        var("SLURM_ARRAY_TASK_MIN")?,
        var("SLURM_ARRAY_TASK_MAX")?,
        var("SLURM_ARRAY_TASK_COUNT")?,
    );
    let step = if get("SLURM_ARRAY_TASK_STEP").is_some() {
        var("SLURM_ARRAY_TASK_STEP")?.max(1)
    } else {
        1
    };
    let evenly = max >= min && (max - min) % step == 0 && (max - min) / step + 1 == count;
    if !evenly || id < min || (id - min) % step != 0 {
        return Err(RanksError::UnevenArray {
            id,
            count,
            min,
            max,
            step,
        });
    }
    Ok(((id - min) / step, count))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn try_ranks(vars: &[(&str, &str)]) -> Result<Ranks, String> {
        Ranks::from_vars(|n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        })
        .map_err(|e| e.to_string())
    }

    fn launch(vars: &[(&str, &str)]) -> Ranks {
        try_ranks(vars).unwrap()
    }

    #[test]
    fn launchers_are_read_in_order_and_kept_consistent() {
        assert_eq!(
            launch(&[]),
            Ranks {
                rank: 0,
                world: 1,
                local_rank: 0,
                local_size: 1
            }
        );
        let ompi = launch(&[
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("SLURM_PROCID", "0"),
        ]);
        assert_eq!(
            ompi,
            Ranks {
                rank: 3,
                world: 4,
                local_rank: 1,
                local_size: 2
            }
        );
        let slurm = launch(&[
            ("SLURM_STEP_ID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_PROCID", "1"),
            ("SLURM_LOCALID", "1"),
        ]);
        assert_eq!(
            slurm,
            Ranks {
                rank: 1,
                world: 2,
                local_rank: 1,
                local_size: 2
            }
        );
        // A batch script sees the allocation's task count and SLURM_PROCID=0 but is one process.
        let batch = launch(&[("SLURM_NTASKS", "2"), ("SLURM_PROCID", "0")]);
        assert_eq!((batch.rank, batch.world), (0, 1));
        // A rank beyond the world (a stale variable) is clamped, never out of range.
        let odd = launch(&[("PMI_SIZE", "2"), ("PMI_RANK", "7")]);
        assert_eq!((odd.rank, odd.world), (1, 2));
    }

    #[test]
    fn job_array_tasks_are_one_more_level_of_ranks() {
        let array = |id: &str, extra: &[(&'static str, &'static str)]| {
            let mut v = vec![
                ("SLURM_ARRAY_TASK_ID", id.to_string()),
                ("SLURM_ARRAY_TASK_MIN", "3".into()),
                ("SLURM_ARRAY_TASK_MAX", "7".into()),
                ("SLURM_ARRAY_TASK_COUNT", "3".into()),
                ("SLURM_ARRAY_TASK_STEP", "2".into()),
            ];
            v.extend(extra.iter().map(|(k, x)| (*k, x.to_string())));
            let r: Vec<(&str, &str)> = v.iter().map(|(k, x)| (*k, x.as_str())).collect();
            try_ranks(&r)
        };
        // --array=3-7:2, one process per task: tasks 3, 5, 7 are ranks 0, 1, 2 of 3.
        let t = array("5", &[]).unwrap();
        assert_eq!((t.rank, t.world, t.local_rank, t.local_size), (1, 3, 0, 1));
        assert_eq!(array("7", &[]).unwrap().rank, 2);
        // Two srun tasks in each array task: task 7's second process is rank 5 of 6.
        let t = array(
            "7",
            &[
                ("SLURM_STEP_ID", "0"),
                ("SLURM_NTASKS", "2"),
                ("SLURM_PROCID", "1"),
                ("SLURM_LOCALID", "1"),
            ],
        )
        .unwrap();
        assert_eq!((t.rank, t.world, t.local_rank), (5, 6, 1));
        // An index off the range, a list that is not a range, a bad value: errors naming it.
        assert!(array("4", &[])
            .unwrap_err()
            .contains("not one evenly spaced range"));
        let list = try_ranks(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        assert!(list.unwrap_err().contains("task 4 of 3"));
        let bad = try_ranks(&[("SLURM_ARRAY_TASK_ID", "x")]).unwrap_err();
        assert!(bad.contains("SLURM_ARRAY_TASK_ID=\"x\""), "{bad}");
        let missing = try_ranks(&[("SLURM_ARRAY_TASK_ID", "1")]);
        assert!(missing
            .unwrap_err()
            .contains("SLURM_ARRAY_TASK_MIN is not set"));
    }
}
