//! Where this process runs in a launch, and which device it computes on: the one place that
//! reads launcher variables and parses `--device`.
//!
//! `syncdiff-train` learns its rank from MPI itself (`dist::Runtime`) and then takes its device
//! from [`DeviceChoice::resolve`] like everyone else; data preparation and generation, which do not
//! start MPI, read the launcher's environment here: OpenMPI (`OMPI_COMM_WORLD_*`), MPICH and
//! Intel MPI (`PMI_*`, `MPI_LOCAL*`), PMIx (`PMIX_RANK`) and SLURM (`SLURM_PROCID`, ...).

use std::str::FromStr;

use tch::Device;

/// Why this process cannot find its place in a SLURM job array.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
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

/// Why `--device` cannot be used on this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// A GPU was asked for and libtorch sees none.
    #[error(
        "--device {choice}: this machine has no CUDA GPU visible to libtorch; use --device cpu"
    )]
    NoGpu {
        /// The choice as given.
        choice: String,
    },
    /// A GPU index beyond the visible ones.
    #[error("--device {choice}: only {gpus} GPU(s) visible")]
    TooFew {
        /// The choice as given.
        choice: String,
        /// GPUs visible.
        gpus: usize,
    },
}

/// This process's place in a launch (one process when no launcher set anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    /// Rank among all processes, `0..world`.
    pub rank: usize,
    /// Number of processes.
    pub world: usize,
    /// Rank among the processes on this node.
    pub local_rank: usize,
    /// Processes on this node.
    pub local_size: usize,
}

impl Launch {
    /// From this process's environment; an error names a SLURM job-array variable that cannot be
    /// turned into a place among the array's tasks.
    pub fn from_env() -> Result<Self, LaunchError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// From variables looked up by `get` (the first launcher variable that parses wins).
    ///
    /// SLURM's task variables count only inside a job step (`srun`, where `SLURM_STEP_ID` is set):
    /// a batch script also sees `SLURM_NTASKS` (the allocation's) and `SLURM_PROCID=0`, but it is
    /// one process. In a job array (`sbatch --array=A-B[:S]`) each array task is one more level:
    /// task i of C with W processes of its own holds ranks `i*W .. i*W+W` of `C*W`, so an array
    /// of single-process tasks splits the work like `mpirun -n C` would.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, LaunchError> {
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
fn array_task(get: &impl Fn(&str) -> Option<String>) -> Result<(usize, usize), LaunchError> {
    let Some(id) = get("SLURM_ARRAY_TASK_ID") else {
        return Ok((0, 1));
    };
    let var = |name: &str| -> Result<usize, LaunchError> {
        let v = get(name).ok_or_else(|| LaunchError::Missing {
            name: name.into(),
            id: id.clone(),
        })?;
        v.trim().parse().map_err(|_| LaunchError::Invalid {
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
        return Err(LaunchError::UnevenArray {
            id,
            count,
            min,
            max,
            step,
        });
    }
    Ok(((id - min) / step, count))
}

/// A `--device` argument: `auto` (this rank's GPU when there is one, else the CPU), `cpu`,
/// `cuda` (this rank's GPU) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// A GPU when libtorch sees one, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// GPU N, or this rank's GPU (`local_rank` modulo the GPUs) when `None`.
    Cuda(Option<usize>),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(None)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(|i| Self::Cuda(Some(i)))
                .ok_or_else(|| format!("{s:?}: expected auto, cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(None) => f.write_str("cuda"),
            Self::Cuda(Some(i)) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceChoice {
    /// The device for the rank `local_rank` of its node on a machine with `gpus` visible GPUs
    /// (`tch::Cuda::device_count()`, passed in so the choice is testable without GPUs).
    pub fn resolve(self, local_rank: usize, gpus: usize) -> Result<Device, DeviceError> {
        let cuda = |i: usize| {
            if i < gpus {
                Ok(Device::Cuda(i))
            } else if gpus == 0 {
                Err(DeviceError::NoGpu {
                    choice: self.to_string(),
                })
            } else {
                Err(DeviceError::TooFew {
                    choice: self.to_string(),
                    gpus,
                })
            }
        };
        match self {
            Self::Auto if gpus > 0 => Ok(Device::Cuda(local_rank % gpus)),
            Self::Auto | Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(None) => cuda(local_rank % gpus.max(1)),
            Self::Cuda(Some(i)) => cuda(i),
        }
    }

    /// [`DeviceChoice::resolve`] with the GPUs libtorch sees.
    pub fn device(self, local_rank: usize) -> Result<Device, DeviceError> {
        self.resolve(local_rank, tch::Cuda::device_count().max(0) as usize)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn try_launch(vars: &[(&str, &str)]) -> Result<Launch, String> {
        Launch::from_vars(|n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        })
        .map_err(|e| e.to_string())
    }

    fn launch(vars: &[(&str, &str)]) -> Launch {
        try_launch(vars).unwrap()
    }

    #[test]
    fn launchers_are_read_in_order_and_kept_consistent() {
        assert_eq!(
            launch(&[]),
            Launch {
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
            Launch {
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
            Launch {
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
            try_launch(&r)
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
        let list = try_launch(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        assert!(list.unwrap_err().contains("task 4 of 3"));
        let bad = try_launch(&[("SLURM_ARRAY_TASK_ID", "x")]).unwrap_err();
        assert!(bad.contains("SLURM_ARRAY_TASK_ID=\"x\""), "{bad}");
        let missing = try_launch(&[("SLURM_ARRAY_TASK_ID", "1")]);
        assert!(missing
            .unwrap_err()
            .contains("SLURM_ARRAY_TASK_MIN is not set"));
    }

    #[test]
    fn devices_parse_and_resolve() {
        let p = |s: &str| s.parse::<DeviceChoice>();
        assert_eq!(p("auto"), Ok(DeviceChoice::Auto));
        assert_eq!(p("cuda:3"), Ok(DeviceChoice::Cuda(Some(3))));
        assert!(p("gpu")
            .unwrap_err()
            .contains("expected auto, cpu, cuda or cuda:N"));
        assert_eq!(DeviceChoice::Auto.resolve(1, 0), Ok(Device::Cpu));
        assert_eq!(DeviceChoice::Auto.resolve(5, 4), Ok(Device::Cuda(1)));
        assert_eq!(DeviceChoice::Cuda(None).resolve(1, 2), Ok(Device::Cuda(1)));
        assert!(DeviceChoice::Cuda(Some(2))
            .resolve(0, 2)
            .unwrap_err()
            .to_string()
            .contains("only 2 GPU(s)"));
        assert!(DeviceChoice::Cuda(None)
            .resolve(0, 0)
            .unwrap_err()
            .to_string()
            .contains("no CUDA GPU"));
    }
}
