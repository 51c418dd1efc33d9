//! `turnpike generate` (hidden): the man pages and shell completions, written from the command
//! line definition of this very binary, for `scripts/deb` to put in the Debian package.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{CommandFactory, Subcommand};
use clap_complete::Shell;

/// What `turnpike generate` writes.
#[derive(Subcommand)]
pub enum Artifact {
    /// Man pages: turnpike.1 and one per subcommand (turnpike-serve.1, turnpike-secret-add.1…).
    Man {
        /// Directory to write them to (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Shell completion scripts: turnpike.bash, _turnpike (zsh), turnpike.fish…
    Completions {
        /// Directory to write them to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Shells to write for (default: bash, zsh and fish).
        #[arg(value_enum)]
        shells: Vec<Shell>,
    },
}

/// Writes `artifact`'s files and prints each one's path.
pub fn generate(artifact: Artifact) -> anyhow::Result<()> {
    match artifact {
        Artifact::Man { out } => {
            create(&out)?;
            clap_mangen::generate_to(crate::Cli::command(), &out)
                .with_context(|| format!("writing man pages to {}", out.display()))?;
            let mut pages: Vec<PathBuf> = std::fs::read_dir(&out)
                .with_context(|| format!("listing {}", out.display()))?
                .filter_map(|entry| Some(entry.ok()?.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "1"))
                .collect();
            pages.sort();
            for page in pages {
                println!("{}", page.display());
            }
        }
        Artifact::Completions { out, shells } => {
            create(&out)?;
            let shells = if shells.is_empty() {
                vec![Shell::Bash, Shell::Zsh, Shell::Fish]
            } else {
                shells
            };
            let mut command = crate::Cli::command();
            for shell in shells {
                let path = clap_complete::generate_to(shell, &mut command, "turnpike", &out)
                    .with_context(|| {
                        format!("writing the {shell} completions to {}", out.display())
                    })?;
                println!("{}", path.display());
            }
        }
    }
    Ok(())
}

fn create(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}
