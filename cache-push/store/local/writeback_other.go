//go:build !linux

package local

// startWriteback does nothing where sync_file_range is missing: the
// fsync of the commit writes the data.
func (f *file) startWriteback() {}
