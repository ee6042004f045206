package queue

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// validator is a wire message that checks its own fields.
type validator interface{ Validate() error }

// encodeMessage validates m and returns its wire form, refusing one
// longer than limit: the stream would refuse it anyway, later and less
// clearly. what names the message in errors ("result").
func encodeMessage(m validator, what string, limit int) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("queue: encode %s: %w", what, err)
	}
	if len(b) > limit {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(b), limit)
	}
	return b, nil
}

// decodeMessage parses and validates one wire message of at most limit
// bytes. Unknown fields are refused: a field this version does not know
// could carry meaning the reader would silently ignore. So is trailing
// data after the one JSON value.
func decodeMessage[T any, P interface {
	*T
	validator
}](data []byte, what string, limit int) (*T, error) {
	if len(data) > limit {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(data), limit)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m T
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after the %s", ErrMalformed, what)
	}
	if err := P(&m).Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}
