// Package nardiff explains why two NARs of the same store path differ.
//
// Diff reads both NARs as streams, in lockstep (a NAR lists its entries in
// one canonical order, so a merge walk needs no index and no disk): files
// only in one, type and mode changes, and for files whose contents differ
// their sizes and sha256, then the most telling detail it can afford — a
// bounded unified diff for small text, the ELF sections that differ, the
// member of an archive (.tar, .gz, .zip, .jar) that differs, or the first
// differing offset with a hex window. Well-known causes of unreproducible
// builds are named when recognised (see Cause).
//
// NARs come from builders that may be hostile, so every cost is bounded
// (see Limits): entries, reported differences, bytes buffered per file,
// decompressed archive members (zip bombs), nesting depth and output size.
// A soft limit truncates the report and says so in Notes; a hard one (too
// many entries, the ctx deadline) returns the partial report with an error
// matching ErrLimit or the ctx error. Nothing in a NAR is ever executed or
// written to disk.
package nardiff
