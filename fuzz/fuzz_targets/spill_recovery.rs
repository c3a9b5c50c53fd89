//! The spill log's recovery on arbitrary segment files: the input is cut into up to three
//! segment files on a simulated disk, recovery rebuilds the index from them, and every batch it
//! keeps is read back. Whatever the bytes: no panic, the index stays within its bound, a batch
//! reads back exactly the audio bytes the index counted, and recovery never changes a segment.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pusher::sim::disk::{DiskFaults, SimDisk};
use pusher::spill::disk::Disk;
use pusher::spill::index::BatchKey;
use pusher::spill::reader::read_batch_audio;
use pusher::spill::record::Location;
use pusher::spill::recovery::recover;
use pusher::spill::scan::segment_file_name;

const BATCHES_MAX: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&shape, bytes)) = data.split_first() else {
        return;
    };
    let no_faults = DiskFaults {
        capacity_bytes: u64::MAX,
        ..DiskFaults::default()
    };
    let disk = SimDisk::new(0, no_faults);
    let dir = Path::new("/spill");
    disk.create_dir_all(dir)
        .expect("the simulated disk makes directories");
    // The first byte: how many segments (1-3) and their first sequence number.
    let segments = usize::from(shape % 3) + 1;
    let first_sequence = u64::from(shape / 3 % 4) + 1;
    let piece = bytes.len().div_ceil(segments).max(1);
    let mut files = Vec::new();
    for (i, chunk) in bytes.chunks(piece).enumerate() {
        let path = dir.join(segment_file_name(first_sequence + i as u64));
        let mut file = disk.create_new(&path).expect("a new file");
        let mut written = 0;
        while written < chunk.len() {
            written += file
                .write_vectored(&[std::io::IoSlice::new(&chunk[written..])])
                .expect("the simulated disk takes every write");
        }
        file.sync_data().expect("sync");
        files.push((path, chunk.to_vec()));
    }
    disk.sync_dir(dir).expect("sync the directory");
    let Ok(mut recovered) = recover(&disk, dir, BATCHES_MAX, 1_700_000_000_000) else {
        // More batches than the bound is an error (skipping one would lose its audio).
        return;
    };
    assert!(recovered.index.len() <= BATCHES_MAX);
    for (path, bytes) in &files {
        let file = disk
            .open_read(path)
            .expect("recovery never removes a segment");
        let mut read = vec![0u8; bytes.len()];
        pusher::spill::disk::read_exact_at(file.as_ref(), &mut read, 0).expect("read back");
        assert_eq!(&read, bytes, "recovery never writes to a segment");
    }
    let mut keys: Vec<BatchKey> = Vec::new();
    recovered
        .index
        .take_ready(Location(u64::MAX), BATCHES_MAX, &mut keys);
    for key in keys {
        let entry = recovered
            .index
            .get(&key)
            .expect("taken batches stay indexed");
        let mut audio = Vec::new();
        if read_batch_audio(&disk, dir, entry, &mut audio).is_ok() {
            assert_eq!(audio.len() as u64, entry.audio_bytes, "{key:?}");
        }
    }
});
