//go:build !linux && !darwin

package isolate

// PIDsOf is not implemented here.
func PIDsOf(uint32) ([]int, error) { return nil, ErrUnsupported }

// KillUID is not implemented here.
func KillUID(uint32) error { return ErrUnsupported }
