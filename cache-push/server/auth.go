package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"strings"
)

// Reading a cache can be restricted to a list of users with HTTP basic
// authentication, which stock Nix sends from its netrc-file: one cache
// server per tenant, each with its tenant's readers, keeps tenants from
// reading each other's caches (docs/tenants.md).

// ReaderLine is a line of a readers file: the user and the SHA-256 of its
// password. Passwords are meant to be long random strings (provenix
// tenant add makes 192-bit ones), for which a fast hash is enough.
func ReaderLine(user, password string) string {
	sum := sha256.Sum256([]byte(password))
	return user + ":sha256:" + hex.EncodeToString(sum[:])
}

// Readers are the users allowed to read a cache, with their passwords'
// SHA-256.
type Readers map[string][sha256.Size]byte

// LoadReaders reads a readers file: one ReaderLine per line; blank lines
// and lines starting with '#' are skipped. A file without users is an
// error: it would lock everybody out, surely not what was meant.
func LoadReaders(path string) (Readers, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cache readers: %w", err)
	}
	r := Readers{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, digest, ok := strings.Cut(line, ":sha256:")
		sum, err := hex.DecodeString(digest)
		if !ok || user == "" || err != nil || len(sum) != sha256.Size {
			return nil, fmt.Errorf("cache readers %s:%d: want USER:sha256:HEX", path, i+1)
		}
		r[user] = [sha256.Size]byte(sum)
	}
	if len(r) == 0 {
		return nil, fmt.Errorf("cache readers %s: no users: nobody could read the cache", path)
	}
	return r, nil
}

// Check reports whether user and password are a reader's; the comparison
// takes the same time whatever the password.
func (r Readers) Check(user, password string) bool {
	want, ok := r[user]
	sum := sha256.Sum256([]byte(password))
	return subtle.ConstantTimeCompare(sum[:], want[:]) == 1 && ok
}

// readerKey is the request context key of the authenticated reader.
type readerKey struct{}

// Reader is the reader RequireReaders let through, "" for a request it
// did not check (a cache without readers).
func Reader(ctx context.Context) string {
	s, _ := ctx.Value(readerKey{}).(string)
	return s
}

// RequireReaders serves h only to requests with a reader's basic
// credentials, each with its reader in its context (Reader); others get
// 401 with a challenge naming realm.
func RequireReaders(h http.Handler, r Readers, realm string) http.Handler {
	challenge := fmt.Sprintf("Basic realm=%q, charset=\"UTF-8\"", realm)
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		user, pass, ok := req.BasicAuth()
		if !ok || !r.Check(user, pass) {
			w.Header().Set("WWW-Authenticate", challenge)
			httpError(w, http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, req.WithContext(context.WithValue(req.Context(), readerKey{}, user)))
	})
}
