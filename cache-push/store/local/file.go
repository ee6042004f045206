package local

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// file is an open temporary file, by its descriptor. An *os.File costs
// each object a system call more (os.NewFile asks the descriptor's flags)
// and a finalizer, and buys nothing here: the store only writes, syncs
// and closes its files, once, from one goroutine at a time.
type file struct {
	fd   int // -1 once closed
	name string
}

// createFile creates name, which must not exist, for writing.
func createFile(name string) (*file, error) {
	// O_EXCL: never share a temporary file with another writer. 0644
	// before umask, as for any file the web server must read.
	fd, err := ignoringEINTR(func() (int, error) {
		return syscall.Open(name, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_CLOEXEC, 0o644)
	})
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return &file{fd: fd, name: name}, nil
}

// Name is the file's name.
func (f *file) Name() string { return f.name }

// Write writes all of b, or fails.
func (f *file) Write(b []byte) (int, error) {
	if f.fd < 0 {
		return 0, &fs.PathError{Op: "write", Path: f.name, Err: fs.ErrClosed}
	}
	n := 0
	for n < len(b) {
		m, err := ignoringEINTR(func() (int, error) { return syscall.Write(f.fd, b[n:]) })
		if err != nil {
			return n, &fs.PathError{Op: "write", Path: f.name, Err: err}
		}
		if m == 0 {
			return n, &fs.PathError{Op: "write", Path: f.name, Err: io.ErrShortWrite}
		}
		n += m
	}
	return n, nil
}

// Sync makes the file's data durable, as os.File.Sync does.
func (f *file) Sync() error {
	if f.fd < 0 {
		return &fs.PathError{Op: "sync", Path: f.name, Err: fs.ErrClosed}
	}
	if err := fsync(f.fd); err != nil {
		return &fs.PathError{Op: "sync", Path: f.name, Err: err}
	}
	return nil
}

// Close closes the file; closing it again does nothing and reports
// fs.ErrClosed, so that a descriptor number the process reused is never
// closed by mistake.
func (f *file) Close() error {
	if f.fd < 0 {
		return &fs.PathError{Op: "close", Path: f.name, Err: fs.ErrClosed}
	}
	fd := f.fd
	f.fd = -1
	// Not retried on EINTR: the descriptor is released whatever close
	// reports (Linux), and a retry could close a reused number.
	if err := syscall.Close(fd); err != nil {
		return &fs.PathError{Op: "close", Path: f.name, Err: err}
	}
	return nil
}

// syncDir fsyncs a directory so that entries created or renamed in it are
// durable. Some filesystems (network mounts, macOS SMB) cannot sync a
// directory; as restic does, that is not treated as a failure because
// nothing better can be done there. It opens the directory by its
// descriptor for the same reason as file: os.Open would try to register
// it with the network poller, three system calls more per flush.
func syncDir(dir string) error {
	fd, err := openDir(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	defer syscall.Close(fd)
	if err := fsync(fd); err != nil &&
		!errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOTSUP) &&
		!errors.Is(err, syscall.ENOTTY) {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// openDir opens dir read-only by its descriptor, for a sync.
func openDir(dir string) (int, error) {
	fd, err := ignoringEINTR(func() (int, error) {
		return syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	})
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	return fd, nil
}

// rename renames oldname to newname. os.Rename first stats newname, to
// refuse replacing a directory with a file; rename(2) refuses that itself
// (EISDIR), so the store, which renames only files, saves that call.
func rename(oldname, newname string) error {
	if _, err := ignoringEINTR(func() (int, error) { return 0, syscall.Rename(oldname, newname) }); err != nil {
		return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: err}
	}
	return nil
}

// ignoringEINTR calls f until it is not interrupted by a signal, as the
// os package does: the Go runtime's signals (preemption) can interrupt a
// system call on a slow filesystem.
func ignoringEINTR[T any](f func() (T, error)) (T, error) {
	for {
		v, err := f()
		if err != syscall.EINTR { // a bare Errno, as the syscall package returns it (and os compares it)
			return v, err
		}
	}
}
