//! One class list per run: an evaluation loader built with the training split's classes keeps labels
//! aligned with training even when the validation split lacks a class folder.

use pe_data::config::DataConfig;
use pe_data::index::{ImageFolder, IndexCache};
use pe_data::loader::{Loader, Split};
use std::path::Path;

fn write_jpeg(path: &Path, shade: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(20, 16, image::Rgb([shade, 0, 0])).save(path).unwrap();
}

#[test]
fn eval_loader_with_classes_labels_through_the_training_list() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    for (i, c) in ["cat", "dog", "fox"].iter().enumerate() {
        write_jpeg(&r.join(format!("train/{c}/0.jpg")), 50 * i as u8);
    }
    write_jpeg(&r.join("val/cat/0.jpg"), 0);
    write_jpeg(&r.join("val/fox/0.jpg"), 100);
    let cfg = DataConfig { root: r.to_path_buf(), img_size: 8, workers: 1, ..Default::default() };
    let classes = ImageFolder::open(r, "train", IndexCache::Beside).unwrap().classes;
    let l = Loader::open(&cfg, Split::Eval { batch_size: 4, classes: Some(&classes) }, 0, 1).unwrap();
    assert_eq!(l.classes().len(), 3);
    assert_eq!(l.missing_classes(), ["dog".to_string()]);
    let labels: Vec<i64> = l.epoch(0).flat_map(|b| b.unwrap().labels).collect();
    assert_eq!(labels, vec![0, 2]);
    // The plain loader numbers the split's own folders: the bug this API exists for.
    let own: Vec<i64> = Loader::open(&cfg, Split::Eval { batch_size: 4, classes: None }, 0, 1)
        .unwrap()
        .epoch(0)
        .flat_map(|b| b.unwrap().labels)
        .collect();
    assert_eq!(own, vec![0, 1]);
    // A stray folder is refused, by name.
    write_jpeg(&r.join("val/wolf/0.jpg"), 9);
    let err = Loader::open(&cfg, Split::Eval { batch_size: 4, classes: Some(&classes) }, 0, 1).unwrap_err();
    assert!(err.to_string().contains("val/wolf"), "{err}");
}
