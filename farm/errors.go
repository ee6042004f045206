package farm

import "errors"

// Errors callers can match with errors.Is.
var (
	// ErrInvalid: a derivation, graph, request or record is malformed.
	ErrInvalid = errors.New("farm: invalid")
	// ErrNotFound: no such build set.
	ErrNotFound = errors.New("farm: build set not found")
)
