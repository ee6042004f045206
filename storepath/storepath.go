// Package storepath is the syntax of Nix store paths, as the oldest Nix we
// serve (2.8) checks it: /nix/store/<hash>-<name>, where the hash part is 32
// characters of Nix's base-32 alphabet and the name has 1 to 211 characters
// of [A-Za-z0-9+-._?=] and does not start with a dot. Everything that names
// a store path on the wire or in the cache goes through Check before it is
// used as a key, a file name or a narinfo line: a newline in a hash part
// once made a NATS key invalid and stalled every pusher.
package storepath

import (
	"errors"
	"fmt"
	"strings"
)

// Dir is the store directory every Provenix path lives in: stock Nix
// clients substitute only paths of their own store directory.
const Dir = "/nix/store"

// Sizes of a store path's parts.
const (
	HashLen    = 32
	MaxNameLen = 211
)

// Alphabet is Nix's base-32 alphabet (no e, o, u, t).
const Alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

// ErrInvalid is wrapped by every error of Check.
var ErrInvalid = errors.New("invalid store path")

// Check reports whether p is an absolute store path in Dir.
func Check(p string) error {
	base, ok := strings.CutPrefix(p, Dir+"/")
	if !ok {
		return fmt.Errorf("%w %q: not in %s", ErrInvalid, p, Dir)
	}
	return CheckBase(base)
}

// CheckBase reports whether base is a store path's base name
// (<hash>-<name>), as narinfo References and Deriver lines give them.
func CheckBase(base string) error {
	if len(base) < HashLen+2 || base[HashLen] != '-' {
		return fmt.Errorf("%w %q: want <32-character hash>-<name>", ErrInvalid, base)
	}
	if err := CheckHashPart(base[:HashLen]); err != nil {
		return err
	}
	return CheckName(base[HashLen+1:])
}

// CheckHashPart reports whether h is 32 characters of Nix base-32.
func CheckHashPart(h string) error {
	if len(h) != HashLen {
		return fmt.Errorf("%w: hash part %q has %d characters, want %d", ErrInvalid, h, len(h), HashLen)
	}
	for i := 0; i < len(h); i++ {
		if strings.IndexByte(Alphabet, h[i]) < 0 {
			return fmt.Errorf("%w: hash part %q: %q is not a Nix base-32 character", ErrInvalid, h, h[i])
		}
	}
	return nil
}

// CheckName reports whether name is a valid store path name.
func CheckName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty name", ErrInvalid)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: name of %d characters, at most %d", ErrInvalid, len(name), MaxNameLen)
	case name[0] == '.':
		return fmt.Errorf("%w: name %q starts with a dot", ErrInvalid, name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("+-._?=", c) >= 0) {
			return fmt.Errorf("%w: name %q: character %q is not allowed", ErrInvalid, name, c)
		}
	}
	return nil
}

// HashPart returns the hash part of a path Check accepts (or of its base
// name); for anything shorter it returns "".
func HashPart(p string) string {
	base := p[strings.LastIndexByte(p, '/')+1:]
	if len(base) < HashLen {
		return ""
	}
	return base[:HashLen]
}

// Name returns the name part of a path Check accepts.
func Name(p string) string {
	base := p[strings.LastIndexByte(p, '/')+1:]
	if len(base) < HashLen+2 {
		return ""
	}
	return base[HashLen+1:]
}
