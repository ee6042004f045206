package local

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

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
// filesystem, and that an error fails every commit of the round. Since
// Linux 5.8 syncfs reports the filesystem's writeback errors since its
// descriptor was opened: it runs on the round's oldest file, so that an
// error of any file of the round (say a background writeback that failed
// before the newest file was opened) is reported. Where syncfs is
// missing, each file and directory is fsynced.
func flushFS(files []*item, dirs []string) ([]error, []error) {
	var err error
	if len(files) > 0 {
		oldest := slices.MinFunc(files, func(a, b *item) int { return cmp.Compare(a.seq, b.seq) })
		err = unix.Syncfs(oldest.f.fd)
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
	fd, err := openDir(dir)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}
