//! Which class each evaluated image counts as. A run's own validation split names its folders by
//! the run's classes; the robustness and relabelled sets do not, and each is scored the way its
//! paper scores it:
//! - ImageNet-V2 names its folders `0`…`999`, the class indices (`--class-map index`);
//! - ImageNet-A and ImageNet-R hold 200 of the 1,000 wnids, and the argmax runs over those 200
//!   logits only (`--class-map subset`);
//! - ImageNet-ReaL gives, for each validation image in file-name order, the list of correct class
//!   indices; an empty list leaves the image out, and a top-1 in the list is correct (`--labels`);
//! - anything else maps its folders with a user's file of `folder class` lines.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pe_data::Loader;

/// An evaluation set that does not fit the checkpoint (exit 2: nothing was evaluated).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EvalSetError(pub String);

fn set_error(message: impl Into<String>) -> anyhow::Error {
    EvalSetError(message.into()).into()
}

/// How the split's folders name classes (`--class-map`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassMap {
    /// Folders are the run's class names (the run's own validation split).
    Names,
    /// Folders are class indices `0`…`N-1` (ImageNet-V2).
    Index,
    /// Folders are a subset of the run's class names; the argmax is restricted to them
    /// (ImageNet-A, ImageNet-R).
    Subset,
    /// A file of `folder class` lines, the class a name of the run's list or an index.
    File(PathBuf),
}

impl std::str::FromStr for ClassMap {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "names" => ClassMap::Names,
            "index" => ClassMap::Index,
            "subset" => ClassMap::Subset,
            path => ClassMap::File(PathBuf::from(path)),
        })
    }
}

/// The model's view of the evaluated labels.
#[derive(Debug, Clone)]
pub struct Targets {
    /// The model's classes (what its logits index).
    pub classes: Vec<String>,
    /// Split label → model class; `None` when the loader numbers labels by the model's list.
    to_model: Option<Vec<i64>>,
    /// The classes the argmax runs over, when not all.
    restrict: Option<Vec<i64>>,
    /// Model class → its column among `restrict` (-1 outside it).
    column: Vec<i64>,
    /// ReaL: the correct classes of each dataset sample (empty: not counted).
    real: Option<Vec<Vec<i64>>>,
}

impl Targets {
    /// Labels that already are the model's classes, all logits in play.
    pub fn identity(classes: Vec<String>) -> Self {
        let column = (0..classes.len() as i64).collect();
        Targets { classes, to_model: None, restrict: None, column, real: None }
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// The model class of a split label.
    pub fn label(&self, split_label: i64) -> i64 {
        self.to_model.as_ref().map_or(split_label, |map| map[split_label as usize])
    }

    /// The classes the argmax runs over, when not all of them.
    pub fn restricted_to(&self) -> Option<&[i64]> {
        self.restrict.as_deref()
    }

    /// The column of model class `class` among the argmax's classes.
    pub fn column(&self, class: i64) -> i64 {
        self.column[class as usize]
    }

    /// ReaL: the correct classes of dataset sample `index` (`None` without `--labels`).
    pub fn real(&self, index: usize) -> Option<&[i64]> {
        self.real.as_ref().map(|real| real[index].as_slice())
    }

    pub fn has_real(&self) -> bool {
        self.real.is_some()
    }

    /// The targets of `loader`'s split under `map`; `loader` was opened with the run's class list for
    /// [`ClassMap::Names`] and with its own folders otherwise.
    pub fn for_split(classes: Vec<String>, map: &ClassMap, loader: &Loader) -> anyhow::Result<Self> {
        let mut targets = Targets::identity(classes);
        let folders = loader.classes();
        let dir = loader.location();
        let to_model: Vec<i64> = match map {
            ClassMap::Names => return Ok(targets),
            ClassMap::Index => folders
                .iter()
                .map(|f| index_folder(dir, f, targets.num_classes()))
                .collect::<Result<_, _>>()?,
            ClassMap::Subset => {
                let position = positions(&targets.classes);
                let mapped = folders
                    .iter()
                    .map(|folder| {
                        position.get(folder.as_str()).copied().ok_or_else(|| {
                            set_error(format!(
                                "{}: --class-map subset expects folders named by the checkpoint's classes \
                                 (e.g. {}), and {folder:?} is not one of its {}",
                                dir.join(folder).display(),
                                targets.classes.first().map_or("", String::as_str),
                                targets.num_classes()
                            ))
                        })
                    })
                    .collect::<anyhow::Result<Vec<i64>>>()?;
                targets.column = vec![-1; targets.num_classes()];
                for (column, &class) in mapped.iter().enumerate() {
                    targets.column[class as usize] = column as i64;
                }
                targets.restrict = Some(mapped.clone());
                mapped
            }
            ClassMap::File(file) => {
                let map = read_class_map(file, &targets.classes)?;
                folders
                    .iter()
                    .map(|folder| {
                        map.get(folder).copied().ok_or_else(|| {
                            set_error(format!(
                                "{}: the folder {folder:?} has no line in the class map {}",
                                dir.join(folder).display(),
                                file.display()
                            ))
                        })
                    })
                    .collect::<anyhow::Result<_>>()?
            }
        };
        targets.to_model = Some(to_model);
        Ok(targets)
    }

    /// Adds ImageNet-ReaL's labels from `file` (a JSON list, one entry per image of the split in
    /// file-name order, each a list of class indices).
    pub fn with_real_labels(mut self, file: &Path, loader: &Loader) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(file).map_err(|e| set_error(format!("{}: {e}", file.display())))?;
        let lists: Vec<Vec<i64>> = serde_json::from_str(&text).map_err(|e| {
            set_error(format!(
                "{}: expected a JSON list of class-index lists (ImageNet-ReaL's real.json): {e}",
                file.display()
            ))
        })?;
        if !loader.has_files() {
            return Err(set_error(format!(
                "{}: ReaL labels follow file names, and {} holds shards: evaluate an image folder",
                file.display(),
                loader.location().display()
            )));
        }
        if lists.len() != loader.len() {
            return Err(set_error(format!(
                "{}: {} label lists for the {} images of {} (one list per image, in file-name order)",
                file.display(),
                lists.len(),
                loader.len(),
                loader.location().display()
            )));
        }
        for (i, list) in lists.iter().enumerate() {
            if let Some(bad) = list.iter().find(|&&c| c < 0 || c as usize >= self.num_classes()) {
                return Err(set_error(format!(
                    "{}: entry {i} lists class {bad}, outside the checkpoint's {} classes",
                    file.display(),
                    self.num_classes()
                )));
            }
        }
        let names: Vec<String> = (0..loader.len())
            .map(|i| {
                let path = loader.sample_path(i);
                path.file_name()
                    .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
            })
            .collect();
        let mut order: Vec<usize> = (0..names.len()).collect();
        order.sort_by(|&a, &b| names[a].cmp(&names[b]));
        if let Some(pair) = order.windows(2).find(|p| names[p[0]] == names[p[1]]) {
            return Err(set_error(format!(
                "{}: two images are named {} ({} and {}): file-name order is ambiguous",
                file.display(),
                names[pair[0]],
                loader.sample_path(pair[0]).display(),
                loader.sample_path(pair[1]).display()
            )));
        }
        let mut real = vec![Vec::new(); names.len()];
        for (list, &index) in lists.into_iter().zip(&order) {
            real[index] = list;
        }
        self.real = Some(real);
        Ok(self)
    }
}

fn positions(classes: &[String]) -> HashMap<&str, i64> {
    classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as i64)).collect()
}

fn index_folder(dir: &Path, folder: &str, num_classes: usize) -> anyhow::Result<i64> {
    match folder.parse::<usize>() {
        Ok(index) if index < num_classes && folder == index.to_string() => Ok(index as i64),
        _ => Err(set_error(format!(
            "{}: --class-map index expects folders named 0..{} (the checkpoint's class indices, as \
             ImageNet-V2 ships them), got {folder:?}",
            dir.join(folder).display(),
            num_classes - 1
        ))),
    }
}

/// `folder class` lines (blank lines and `#` comments skipped): the class a name of `classes` or an
/// index into it.
fn read_class_map(file: &Path, classes: &[String]) -> anyhow::Result<HashMap<String, i64>> {
    let text = std::fs::read_to_string(file).map_err(|e| set_error(format!("{}: {e}", file.display())))?;
    let position = positions(classes);
    let mut map = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("{}:{}", file.display(), number + 1);
        let mut fields = line.split_whitespace();
        let (Some(folder), Some(class), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(set_error(format!("{}: expected `folder class`, got {line:?}", at())));
        };
        let index = match (position.get(class), class.parse::<usize>()) {
            (Some(&index), _) => index,
            (None, Ok(index)) if index < classes.len() => index as i64,
            _ => {
                return Err(set_error(format!(
                    "{}: {class:?} is neither one of the checkpoint's {} class names nor an index below it",
                    at(),
                    classes.len()
                )))
            }
        };
        if map.insert(folder.to_string(), index).is_some() {
            return Err(set_error(format!("{}: the folder {folder:?} is mapped twice", at())));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        ["n01", "n02", "n03"].map(String::from).to_vec()
    }

    #[test]
    fn index_folders_are_exact_decimal_indices_below_the_class_count() {
        let dir = Path::new("/sets/v2");
        assert_eq!(index_folder(dir, "2", 3).unwrap(), 2);
        for bad in ["3", "01", "-1", "n01"] {
            let message = index_folder(dir, bad, 3).unwrap_err().to_string();
            assert!(
                message.contains("folders named 0..2") && message.contains(&format!("{bad:?}")),
                "{message}"
            );
        }
    }

    #[test]
    fn a_class_map_takes_names_or_indices_and_names_the_line_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("map.txt");
        std::fs::write(&file, "# mine\ncats n02\n\ndogs 2  # by index\n").unwrap();
        let map = read_class_map(&file, &classes()).unwrap();
        assert_eq!((map["cats"], map["dogs"], map.len()), (1, 2, 2));
        for (text, expected) in [
            ("cats n09\n", "map.txt:1: \"n09\" is neither"),
            ("cats\n", "map.txt:1: expected `folder class`"),
            ("a 0\nb 1 2\n", "map.txt:2: expected"),
            ("a 0\na 1\n", "map.txt:2: the folder \"a\" is mapped twice"),
            ("a 3\n", "nor an index below it"),
        ] {
            std::fs::write(&file, text).unwrap();
            let message = read_class_map(&file, &classes()).unwrap_err().to_string();
            assert!(message.contains(expected), "{text:?}: {message}");
        }
    }
}
