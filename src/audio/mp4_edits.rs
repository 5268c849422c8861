//! The edit list of an MP4/M4A audio track: which stretch of the decoded samples is the audio.
//! AAC encoders put priming samples before it (ffmpeg 1024, Apple's encoders 2112) and padding
//! after it, and the track's edit list (`moov/trak/edts/elst`) says what to play. symphonia 0.5
//! reads the list but does not apply it, so AAC from ffmpeg decoded 23 ms late at 44.1 kHz, and
//! every time stamp of its transcript was late by as much.

use std::io::{Read, Seek, SeekFrom};

/// What to play of a track's decoded samples, in sample frames at its decoded rate: `silence`
/// frames of nothing first (empty edits), then from frame `skip` on, `keep` frames (to the end
/// when None).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayedRange {
    pub silence: u64,
    pub skip: u64,
    pub keep: Option<u64>,
}

impl PlayedRange {
    /// Apply the range to interleaved samples of `channels` channels. Leading silence is capped
    /// at the samples' own length: a damaged or hostile list must not make a file of seconds
    /// allocate hours.
    pub fn apply(&self, samples: Vec<f32>, channels: usize) -> Vec<f32> {
        let frames = samples.len() / channels.max(1);
        let skip = (self.skip as usize).min(frames);
        let end = self.keep.map_or(frames, |keep| skip.saturating_add(keep as usize).min(frames));
        let silence = (self.silence as usize).min(frames);
        let mut out = vec![0.0; silence * channels];
        out.extend_from_slice(&samples[skip * channels..end * channels]);
        out
    }
}

/// The played range of the track at `track_index` (its place among the `trak` boxes, which is
/// symphonia's track id) of an ISO base media file, for samples decoded at `sample_rate`.
/// None when the file is not one (no `ftyp` box first), has no edit list for the track, or
/// one this does not apply (several stretches of media, a rate other than 1, unreadable
/// boxes): its samples play whole, as before.
pub fn played_range(file: &mut (impl Read + Seek), track_index: usize, sample_rate: u32) -> Option<PlayedRange> {
    let mut head = [0u8; 8];
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_exact(&mut head).ok()?;
    if head[4..8] != *b"ftyp" {
        return None;
    }
    let moov = read_top_level_box(file, *b"moov")?;
    let movie_timescale = field_after_times(find_child(&moov, *b"mvhd")?)?;
    let (_, trak) = children(&moov).filter(|(kind, _)| kind == b"trak").nth(track_index)?;
    let media_timescale = field_after_times(find_child(find_child(trak, *b"mdia")?, *b"mdhd")?)?;
    let edits = edit_list(find_child(find_child(trak, *b"edts")?, *b"elst")?)?;
    range_of(&edits, movie_timescale, media_timescale, sample_rate)
}

/// One edit: its duration in the movie's timescale, and where it starts in the media's
/// timescale (−1: an empty edit, nothing played for its duration).
#[derive(Debug, Clone, Copy)]
struct Edit {
    duration: u64,
    media_time: i64,
    rate: u32,
}

fn range_of(edits: &[Edit], movie_timescale: u32, media_timescale: u32, sample_rate: u32) -> Option<PlayedRange> {
    if movie_timescale == 0 || media_timescale == 0 {
        return None;
    }
    let frames = |t: u64, timescale: u32| {
        let frames = (t as u128 * sample_rate as u128 + timescale as u128 / 2) / timescale as u128;
        u64::try_from(frames).unwrap_or(u64::MAX)
    };
    let empty = edits.iter().take_while(|e| e.media_time == -1).count();
    let played = &edits[empty..];
    // One stretch of media played at rate 1 (16.16 fixed point): what encoders write.
    let [edit] = played else { return None };
    if edit.media_time < 0 || edit.rate != 1 << 16 {
        return None;
    }
    let silence = edits[..empty].iter().fold(0u64, |sum, e| sum.saturating_add(frames(e.duration, movie_timescale)));
    Some(PlayedRange {
        silence,
        skip: frames(edit.media_time as u64, media_timescale),
        // A duration of 0 plays the media to its end.
        keep: (edit.duration > 0).then(|| frames(edit.duration, movie_timescale)),
    })
}

/// The entries of an `elst` box body.
fn edit_list(elst: &[u8]) -> Option<Vec<Edit>> {
    let version = *elst.first()?;
    let count = be_u32(elst, 4, 8)? as usize;
    let entry_size = if version == 1 { 20 } else { 12 };
    let entries = elst.get(8..8 + count.checked_mul(entry_size)?)?;
    entries
        .chunks_exact(entry_size)
        .map(|e| {
            Some(if version == 1 {
                Edit { duration: be_u64(e, 0)?, media_time: be_u64(e, 8)? as i64, rate: be_u32(e, 16, 20)? }
            } else {
                Edit { duration: be_u32(e, 0, 4)? as u64, media_time: be_u32(e, 4, 8)? as i32 as i64, rate: be_u32(e, 8, 12)? }
            })
        })
        .collect()
}

/// The 32-bit field after the creation and modification times of an `mvhd` or `mdhd` body (its
/// timescale): 32-bit times in version 0, 64-bit in version 1.
fn field_after_times(body: &[u8]) -> Option<u32> {
    match *body.first()? {
        0 => be_u32(body, 12, 16),
        1 => be_u32(body, 20, 24),
        _ => None,
    }
}

/// Read the first top-level box of `kind` whole (at most 64 MiB), skipping the others.
fn read_top_level_box(file: &mut (impl Read + Seek), kind: [u8; 4]) -> Option<Vec<u8>> {
    const MAX_BOX: u64 = 64 << 20;
    let mut at = file.seek(SeekFrom::Start(0)).ok()?;
    loop {
        let mut header = [0u8; 8];
        file.read_exact(&mut header).ok()?;
        let mut size = u32::from_be_bytes(header[..4].try_into().ok()?) as u64;
        let mut header_len = 8;
        if size == 1 {
            let mut large = [0u8; 8];
            file.read_exact(&mut large).ok()?;
            size = u64::from_be_bytes(large);
            header_len = 16;
        }
        if header[4..8] == kind {
            // Size 0: the box runs to the end of the file.
            let body_len = if size == 0 { MAX_BOX } else { size.checked_sub(header_len)? };
            let mut body = Vec::new();
            file.take(body_len.min(MAX_BOX)).read_to_end(&mut body).ok()?;
            return Some(body);
        }
        if size < header_len {
            return None;
        }
        at = at.checked_add(size)?;
        file.seek(SeekFrom::Start(at)).ok()?;
    }
}

/// The child boxes of a container box's body: (kind, body).
fn children(body: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    let mut rest = body;
    std::iter::from_fn(move || {
        let size = be_u32(rest, 0, 4)? as usize;
        let kind: [u8; 4] = rest.get(4..8)?.try_into().ok()?;
        let (header_len, size) = match size {
            1 => (16, usize::try_from(be_u64(rest, 8)?).ok()?),
            0 => (8, rest.len()),
            _ => (8, size),
        };
        let child = rest.get(header_len..size)?;
        rest = &rest[size..];
        Some((kind, child))
    })
}

fn find_child(body: &[u8], kind: [u8; 4]) -> Option<&[u8]> {
    children(body).find(|(k, _)| *k == kind).map(|(_, child)| child)
}

fn be_u32(bytes: &[u8], from: usize, to: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(from..to)?.try_into().ok()?))
}

fn be_u64(bytes: &[u8], from: usize) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(from..from + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out
    }

    /// A file with one audio track: movie timescale 1000, media timescale 44100, and `elst`.
    fn movie(elst: &[u8], version1_headers: bool) -> Vec<u8> {
        let header = |fields_after_times: &[u8]| {
            let mut body = vec![u8::from(version1_headers), 0, 0, 0];
            body.extend_from_slice(&[0; 16][..if version1_headers { 16 } else { 8 }]);
            body.extend_from_slice(fields_after_times);
            body
        };
        let mvhd = header(&1000u32.to_be_bytes());
        let tkhd = header(&1u32.to_be_bytes());
        let mdhd = header(&44100u32.to_be_bytes());
        let trak = [boxed(b"tkhd", &tkhd), boxed(b"edts", &boxed(b"elst", elst)), boxed(b"mdia", &boxed(b"mdhd", &mdhd))].concat();
        let moov = [boxed(b"mvhd", &mvhd), boxed(b"trak", &trak)].concat();
        [boxed(b"ftyp", b"M4A \0\0\0\0"), boxed(b"mdat", &[0; 32]), boxed(b"moov", &moov)].concat()
    }

    fn elst_v0(entries: &[(u32, i32)]) -> Vec<u8> {
        let mut body = vec![0, 0, 0, 0];
        body.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        for &(duration, media_time) in entries {
            body.extend_from_slice(&duration.to_be_bytes());
            body.extend_from_slice(&media_time.to_be_bytes());
            body.extend_from_slice(&(1u32 << 16).to_be_bytes());
        }
        body
    }

    #[test]
    fn an_encoders_priming_and_padding_are_left_out() {
        // What ffmpeg writes: 1024 priming samples, 9.655 s played.
        let file = movie(&elst_v0(&[(9655, 1024)]), false);
        let range = played_range(&mut std::io::Cursor::new(&file), 0, 44100);
        assert_eq!(range, Some(PlayedRange { silence: 0, skip: 1024, keep: Some(425_786) }));
        // The same at another decoded rate (the edit list counts in its own timescales).
        let range = played_range(&mut std::io::Cursor::new(&file), 0, 22050).unwrap();
        assert_eq!((range.skip, range.keep), (512, Some(212_893)));
        // Version 1 headers put the timescales and track id after 64-bit times.
        let file = movie(&elst_v0(&[(9655, 1024)]), true);
        assert_eq!(played_range(&mut std::io::Cursor::new(&file), 0, 44100).map(|r| r.skip), Some(1024));
        // There is no second track.
        assert_eq!(played_range(&mut std::io::Cursor::new(&file), 1, 44100), None);
    }

    #[test]
    fn an_empty_edit_is_silence_and_lists_this_does_not_apply_play_everything() {
        let file = movie(&elst_v0(&[(500, -1), (9655, 2112)]), false);
        let range = played_range(&mut std::io::Cursor::new(&file), 0, 44100).unwrap();
        assert_eq!((range.silence, range.skip), (22050, 2112));
        // Two stretches of media: played whole, as without a list.
        let file = movie(&elst_v0(&[(1000, 0), (1000, 88200)]), false);
        assert_eq!(played_range(&mut std::io::Cursor::new(&file), 0, 44100), None);
        // Not ISO media at all (an MP3's ID3 tag first).
        let mp3 = [b"ID3\x04\0\0\0\0\0\x0a".as_slice(), &[0; 64]].concat();
        assert_eq!(played_range(&mut std::io::Cursor::new(&mp3), 0, 44100), None);
        // Truncated boxes are no list, not a panic.
        let file = movie(&elst_v0(&[(9655, 1024)]), false);
        for cut in [10, 60, file.len() - 20] {
            assert_eq!(played_range(&mut std::io::Cursor::new(&file[..cut]), 0, 44100), None);
        }
    }

    #[test]
    fn a_range_cuts_interleaved_samples_by_frames() {
        let samples: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let range = PlayedRange { silence: 1, skip: 2, keep: Some(3) };
        assert_eq!(range.apply(samples.clone(), 2), vec![0.0, 0.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        // A range past the samples keeps what there is.
        assert_eq!(PlayedRange { silence: 0, skip: 8, keep: Some(100) }.apply(samples, 2), vec![16.0, 17.0, 18.0, 19.0]);
        // Silence longer than the audio is capped at its length.
        assert_eq!(PlayedRange { silence: u64::MAX, skip: 0, keep: None }.apply(vec![1.0, 2.0], 1), vec![0.0, 0.0, 1.0, 2.0]);
    }
}
