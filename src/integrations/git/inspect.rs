//! Reading what a head commit changes relative to a base, from the mirror alone.

use gix::ObjectId;
use gix::bstr::ByteSlice;
use gix::object::tree::diff::{Action, Change};
use gix::revision::walk::Sorting;
use gix::traverse::commit::simple::CommitTimeOrder;

use super::{FileChange, FileStatus, GitError, Inspection, Mirror, describe};

impl Mirror {
    /// What `head` (a full 40- or 64-hex commit id) changes relative to `base` (a ref such as `main` or
    /// `refs/heads/main`, or a commit id), as far as the mirror knows.
    ///
    /// A head the mirror does not have is `head_exists: false`, not an error; a base it cannot resolve is
    /// [`GitError::NotFound`]. Fetch both first.
    pub fn inspect(&self, base: &str, head: &str) -> Result<Inspection, GitError> {
        let _packs = self.reading();
        let mut repo = self.repo()?;
        repo.object_cache_size_if_unset(16 * 1024 * 1024);
        let corrupt = |what: &str, e: gix::Error| GitError::Corrupt { message: format!("{what}: {}", describe(&e)) };

        let Some(head_id) = parse_commit_id(&repo, head)? else {
            return Ok(Inspection::missing_head());
        };
        let header = match repo.try_find_header(head_id) {
            Ok(Some(header)) => header,
            Ok(None) => return Ok(Inspection::missing_head()),
            Err(e) => return Err(corrupt("reading the head object", e)),
        };
        if header.kind() != gix::object::Kind::Commit {
            return Err(GitError::Invalid {
                what: "head",
                message: format!("{head} is a {}, not a commit", header.kind()),
            });
        }
        let base_id = resolve_base(&repo, base)?;

        let merge_base =
            repo.merge_base(base_id, head_id).map_err(|e| corrupt("finding the merge base", e))?.map(|id| id.detach());

        // `git log base..head`: what the pull request adds on top of its base branch.
        let mut commits = Vec::new();
        let walk = repo
            .rev_walk([head_id])
            .with_hidden([base_id])
            .sorting(Sorting::ByCommitTime(CommitTimeOrder::NewestFirst))
            .all()
            .map_err(|e| corrupt("walking the commits", e))?;
        for info in walk {
            let info = info.map_err(|e| corrupt("walking the commits", e))?;
            commits.push(info.id.to_string());
        }

        let head_tree = repo
            .find_commit(head_id)
            .and_then(|c| c.tree())
            .map_err(|e| corrupt("reading the head commit's tree", e))?;
        let base_tree = match merge_base {
            Some(id) => {
                repo.find_commit(id).and_then(|c| c.tree()).map_err(|e| corrupt("reading the merge base's tree", e))?
            }
            None => repo.empty_tree(),
        };
        let tree_changed = head_tree.id != base_tree.id;
        let changed_files = if tree_changed {
            changed_files(&repo, &base_tree, &head_tree).map_err(|e| corrupt("diffing", e))?
        } else {
            Vec::new()
        };

        Ok(Inspection {
            head_exists: true,
            merge_base: merge_base.map(|id| id.to_string()),
            commits,
            changed_files,
            tree_changed,
        })
    }
}

/// `None` for a well-formed id of the other hash kind: such an object cannot be in this repository.
fn parse_commit_id(repo: &gix::Repository, head: &str) -> Result<Option<ObjectId>, GitError> {
    let head = head.trim();
    if !matches!(head.len(), 40 | 64) || !head.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(GitError::Invalid {
            what: "head",
            message: format!("{head:?} is not a full 40 or 64 character hexadecimal commit id"),
        });
    }
    if head.len() != repo.object_hash().len_in_hex() {
        return Ok(None);
    }
    ObjectId::from_hex(head.as_bytes())
        .map(Some)
        .map_err(|e| GitError::Invalid { what: "head", message: format!("{head}: {e}") })
}

fn resolve_base(repo: &gix::Repository, base: &str) -> Result<ObjectId, GitError> {
    let not_found = |detail: String| GitError::NotFound { what: format!("base {base} in the mirror ({detail})") };
    let id = repo.rev_parse_single(base.trim()).map_err(|e| not_found(describe(&e)))?;
    let commit = id
        .object()
        .and_then(|o| o.peel_to_commit())
        .map_err(|e| not_found(format!("does not name a commit: {}", describe(&e))))?;
    Ok(commit.id)
}

fn changed_files(
    repo: &gix::Repository,
    old: &gix::Tree<'_>,
    new: &gix::Tree<'_>,
) -> Result<Vec<FileChange>, gix::Error> {
    // `.gitattributes` (binary, -diff, ...) as they are in the head commit: a bare mirror has no index or work tree.
    let index = repo.index_from_tree(&new.id)?;
    let attributes = repo.attributes_only(&index, gix::worktree::stack::state::attributes::Source::IdMapping)?.detach();
    let mode = gix::diff::blob::pipeline::Mode::ToGit;
    let mut rename_cache = gix::diff::resource_cache(repo, mode, attributes.clone(), Default::default())?;
    let mut line_cache = gix::diff::resource_cache(repo, mode, attributes, Default::default())?;

    let mut files = Vec::new();
    let mut failure = None;
    old.changes()?
        .options(|o| {
            // Like `git diff -M`: renames at 50% similarity, no copies, whatever the mirror's config says.
            o.track_path().track_rewrites(Some(gix::diff::Rewrites::default()));
        })
        .for_each_to_obtain_tree_with_cache(new, &mut rename_cache, |change| {
            match file_change(change, &mut line_cache) {
                Ok(Some(file)) => files.push(file),
                Ok(None) => {}
                Err(e) => {
                    failure = Some(e);
                    return Ok(Action::Break(()));
                }
            }
            line_cache.clear_resource_cache_keep_allocation();
            Ok(Action::Continue(()))
        })?;
    if let Some(e) = failure {
        return Err(e);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn file_change(
    change: Change<'_, '_, '_>,
    cache: &mut gix::diff::blob::Platform,
) -> Result<Option<FileChange>, gix::Error> {
    // Directories show up as entries of their own; their files are reported one by one.
    if change.entry_mode().is_tree() {
        return Ok(None);
    }
    let (path, previous_path, status) = match change {
        Change::Addition { location, .. } => (location, None, FileStatus::Added),
        Change::Deletion { location, .. } => (location, None, FileStatus::Deleted),
        Change::Modification { location, .. } => (location, None, FileStatus::Modified),
        Change::Rewrite { source_location, location, .. } => (location, Some(source_location), FileStatus::Renamed),
    };
    // Submodules (commit entries) have no lines; binary blobs count 0/0 as `git diff --numstat` shows `-`.
    let (additions, deletions) = if change.entry_mode().is_commit() || is_commit(&change) {
        (0, 0)
    } else {
        match change.diff(cache)?.line_counts()? {
            Some(counts) => (u64::from(counts.insertions), u64::from(counts.removals)),
            None => (0, 0),
        }
    };
    Ok(Some(FileChange {
        path: path.to_str_lossy().into_owned(),
        status,
        previous_path: previous_path.map(|p| p.to_str_lossy().into_owned()),
        additions,
        deletions,
    }))
}

/// A modification from a file to a submodule or back also involves a commit entry on one side.
fn is_commit(change: &Change<'_, '_, '_>) -> bool {
    match change {
        Change::Modification { previous_entry_mode, .. } => previous_entry_mode.is_commit(),
        Change::Rewrite { source_entry_mode, .. } => source_entry_mode.is_commit(),
        _ => false,
    }
}
