package local

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// fsFlush is flushFS here (WithFilesystemFlush).
var fsFlush = flushFS

// flushFS makes a round durable by one syncfs of the filesystem of the
// store's temporary directory: it writes back every dirty file there,
// then commits the journal, which covers the round's files (all in the
// temporary directory) and directories (a rename cannot leave its
// filesystem). One system call for any number of files and directories;
// the price is that it also flushes whatever else is dirty on that
// filesystem. Since Linux 5.8 syncfs reports writeback errors; where it
// is missing, each file and directory is fsynced.
func flushFS(files []*item, dirs []string) ([]error, []error) {
	var err error
	if len(files) > 0 {
		err = unix.Syncfs(int(files[0].f.Fd()))
	} else {
		err = syncFS(dirs[0])
	}
	if errors.Is(err, unix.ENOSYS) {
		return flushEach(files, dirs)
	}
	if err != nil {
		err = fmt.Errorf("syncfs: %w", err)
	}
	fileErrs := make([]error, len(files))
	for i, it := range files {
		fileErrs[i] = err
		if cerr := it.f.Close(); fileErrs[i] == nil {
			fileErrs[i] = cerr
		}
	}
	dirErrs := make([]error, len(dirs))
	for i := range dirs {
		dirErrs[i] = err
	}
	return fileErrs, dirErrs
}

// syncFS runs syncfs on dir's filesystem.
func syncFS(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}
