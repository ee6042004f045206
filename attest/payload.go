package attest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	intoto "github.com/in-toto/attestation/go/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
)

// readStatement reads the in-toto Statement a DSSE envelope carries, as
// strictly as sigstore-go's Envelope.Statement reads it (protojson:
// unknown keys, a key twice, invalid UTF-8 and numbers out of range are
// refused) but with protojson going over each byte once. The predicate's
// value is cut out and returned as raw JSON for its typed reader
// (parseStatement) instead of first becoming a structpb tree that would be
// encoded and read again; the returned Statement's Predicate is nil.
//
// Only payloads Envelope.Statement accepts are accepted (FuzzStatement
// compares the two): everything but the predicate's value is read by
// protojson as the Statement it is, the value's shape by predicateSpan
// (what a Struct would refuse in parts the typed reader skips) and by the
// typed reader.
func readStatement(env *bundle.Envelope) (*intoto.Statement, []byte, error) {
	if env.PayloadType != PayloadType {
		return nil, nil, fmt.Errorf("%w: payload type %q, want %q", ErrMalformedBundle, env.PayloadType, PayloadType)
	}
	payload, err := env.DecodeB64Payload()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: payload: %w", ErrMalformedBundle, err)
	}
	return splitStatement(payload)
}

// splitStatement is readStatement for a payload's bytes.
func splitStatement(payload []byte) (*intoto.Statement, []byte, error) {
	start, end, err := predicateSpan(payload)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: statement: %w", ErrMalformedBundle, err)
	}
	rest, pred := payload, []byte(nil)
	if start >= 0 {
		pred = payload[start:end]
		rest = make([]byte, 0, len(payload)-len(pred)+2)
		rest = append(append(append(rest, payload[:start]...), "{}"...), payload[end:]...)
	}
	var st intoto.Statement
	if err := protojson.Unmarshal(rest, &st); err != nil {
		return nil, nil, fmt.Errorf("%w: statement: %w", ErrMalformedBundle, err)
	}
	st.Predicate = nil
	return &st, pred, nil
}

// errDuplicateKey: an object of the payload has a key twice, which
// protojson refuses and encoding/json would resolve its own way.
var errDuplicateKey = errors.New("duplicate key")

// predicateSpan finds the value of the top-level "predicate" key of a
// JSON object: payload[start:end], or -1, -1 when there is none. It
// refuses a second "predicate" key and, within the value, what decoding
// it into a structpb.Struct refuses but protojson's typed reader does not
// look at in keys it skips: a key twice in one object (keys compared
// unescaped, as protojson compares them), a number that does not parse as
// a float64 (as a Struct holds numbers), a value nested deeper than a
// Struct may hold (maxPredicateDepth). The other values are only stepped
// over: protojson reads them afterwards.
func predicateSpan(payload []byte) (start, end int, err error) {
	// Well-formed, so the scan below need not check the syntax.
	if !json.Valid(payload) {
		return -1, -1, errors.New("not valid JSON")
	}
	if !utf8.Valid(payload) {
		// protojson refuses invalid UTF-8 in any string, skipped keys'
		// too; encoding/json would take it.
		return -1, -1, errors.New("invalid UTF-8")
	}
	i := skipBlanks(payload, 0)
	if payload[i] != '{' {
		return -1, -1, errors.New("not a JSON object")
	}
	start, end = -1, -1
	for i = skipBlanks(payload, i+1); payload[i] != '}'; i = skipBlanks(payload, i) {
		if payload[i] == ',' {
			i = skipBlanks(payload, i+1)
		}
		kend := stringEnd(payload, i)
		k, err := unquote(payload[i:kend])
		if err != nil {
			return -1, -1, err
		}
		i = skipBlanks(payload, skipBlanks(payload, kend)+1) // past the colon
		if k != "predicate" {
			i, _ = scanValue(payload, i, false, 0)
			continue
		}
		if start >= 0 {
			return -1, -1, fmt.Errorf("%w %q", errDuplicateKey, k)
		}
		start = i
		if payload[i] != '{' && payload[i] != 'n' {
			// Not a Struct (nor null): protojson refuses it, so sigstore-go
			// refused it before the signer was known, and no builder was
			// blamed for it.
			return -1, -1, errors.New("predicate is not a JSON object")
		}
		if end, err = scanValue(payload, i, true, 0); err != nil {
			return -1, -1, fmt.Errorf("predicate: %w", err)
		}
		i = end
	}
	return start, end, nil
}

// maxPredicateDepth is how deep in the predicate a value may be, the
// predicate's own members being at depth 1, for Envelope.Statement to
// read it: protojson refuses messages nested deeper than its recursion
// limit, and there the Statement and the predicate's Struct are two
// messages and each value below one more (a Value). encoding/json
// refuses a container deeper, but not a scalar at that depth, which
// protojson's typed reader skips in an unknown key's value.
const maxPredicateDepth = protowire.DefaultRecursionLimit - 2

// scanValue returns where the value starting at b[i] ends; b is
// well-formed JSON. With check, it refuses in the value what a Struct
// refuses (see predicateSpan); depth is the value's in the predicate.
func scanValue(b []byte, i int, check bool, depth int) (int, error) {
	if check && depth > maxPredicateDepth {
		return i, fmt.Errorf("predicate nested deeper than %d", maxPredicateDepth)
	}
	switch b[i] {
	case '{':
		var keys map[string]struct{}
		if check {
			keys = map[string]struct{}{}
		}
		for i = skipBlanks(b, i+1); b[i] != '}'; i = skipBlanks(b, i) {
			if b[i] == ',' {
				i = skipBlanks(b, i+1)
			}
			kend := stringEnd(b, i)
			if check {
				k, err := unquote(b[i:kend])
				if err != nil {
					return i, err
				}
				if _, dup := keys[k]; dup {
					return i, fmt.Errorf("%w %q", errDuplicateKey, k)
				}
				keys[k] = struct{}{}
			}
			var err error
			if i, err = scanValue(b, skipBlanks(b, skipBlanks(b, kend)+1), check, depth+1); err != nil {
				return i, err
			}
		}
		return i + 1, nil
	case '[':
		for i = skipBlanks(b, i+1); b[i] != ']'; i = skipBlanks(b, i) {
			if b[i] == ',' {
				i = skipBlanks(b, i+1)
			}
			var err error
			if i, err = scanValue(b, i, check, depth+1); err != nil {
				return i, err
			}
		}
		return i + 1, nil
	case '"':
		return stringEnd(b, i), nil
	case 't', 'n':
		return i + 4, nil
	case 'f':
		return i + 5, nil
	default:
		j := i
		for j < len(b) && strings.IndexByte("+-.0123456789eE", b[j]) >= 0 {
			j++
		}
		if check {
			if _, err := strconv.ParseFloat(string(b[i:j]), 64); err != nil {
				return j, fmt.Errorf("number %s: %w", b[i:j], err)
			}
		}
		return j, nil
	}
}

func skipBlanks(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// stringEnd is where the string starting at b[i] (its opening quote)
// ends, past its closing quote.
func stringEnd(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(b)
}

// unquote is a JSON string's value; most keys have no escapes.
func unquote(q []byte) (string, error) {
	if len(q) < 2 {
		return "", errors.New("not a string")
	}
	if bytes.IndexByte(q, '\\') < 0 {
		return string(q[1 : len(q)-1]), nil
	}
	var s string
	err := json.Unmarshal(q, &s)
	return s, err
}
