//go:build !linux

package local

// writebackMax: see writeback_linux.go.
const writebackMax = 16 << 20

// startWriteback does nothing where sync_file_range is missing: the
// round's flush writes the data.
func (f *file) startWriteback() {}
