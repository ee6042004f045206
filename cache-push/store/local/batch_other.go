//go:build !linux

package local

// fsFlush is flushEach where syncfs is missing (WithFilesystemFlush).
var fsFlush = flushEach
