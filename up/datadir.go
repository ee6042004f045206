package up

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"codeberg.org/provenix/provenix/attest"
	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cache-push/policy"
)

// Paths is the layout of a data directory (docs/data-dir.md).
type Paths struct{ Dir string }

func (p Paths) BuilderKey() string { return filepath.Join(p.Dir, "keys", "builder") }
func (p Paths) BuilderPub() string { return p.BuilderKey() + ".pub" }
func (p Paths) CacheKey() string   { return filepath.Join(p.Dir, "keys", "cache") }
func (p Paths) CachePub() string   { return p.CacheKey() + ".pub" }
func (p Paths) VSAKey() string     { return filepath.Join(p.Dir, "keys", "vsa") }
func (p Paths) VSAPub() string     { return p.VSAKey() + ".pub" }
func (p Paths) Policy() string     { return filepath.Join(p.Dir, "policy.yaml") }
func (p Paths) NATS() string       { return filepath.Join(p.Dir, "nats") }
func (p Paths) Cache() string      { return filepath.Join(p.Dir, "cache") }
func (p Paths) Runtime() string    { return filepath.Join(p.Dir, "up.json") }
func (p Paths) NATSToken() string  { return filepath.Join(p.Dir, "keys", "nats.token") }

// DefaultDataDir is $PROVENIX_DATA_DIR, else $XDG_DATA_HOME/provenix, else
// ~/.local/share/provenix.
func DefaultDataDir() string {
	if d := os.Getenv("PROVENIX_DATA_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "provenix")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "share", "provenix")
	}
	return ".provenix"
}

// Init creates what a data directory lacks: builder, cache and VSA keys, a
// NATS token and a policy trusting the local builder. Existing files are kept.
// It reports what it created.
func Init(p Paths) ([]string, error) {
	var created []string
	if err := os.MkdirAll(filepath.Join(p.Dir, "keys"), 0o700); err != nil {
		return nil, err
	}
	if !exists(p.BuilderKey()) {
		if _, err := attest.GenerateKeyFiles(p.BuilderKey()); err != nil {
			return created, err
		}
		created = append(created, p.BuilderKey(), p.BuilderPub())
	}
	if !exists(p.CacheKey()) {
		if _, err := cachepush.GenerateKeyFiles(cacheKeyName, p.CacheKey()); err != nil {
			return created, err
		}
		created = append(created, p.CacheKey(), p.CachePub())
	}
	if !exists(p.VSAKey()) {
		// The pusher's own key for verification summaries: not the
		// builder's (a pusher vouching for what it verified is not a
		// builder attesting what it built) and not the Nix cache key
		// (an ECDSA P-256 key, as Sigstore bundles need).
		if _, err := attest.GenerateKeyFiles(p.VSAKey()); err != nil {
			return created, err
		}
		created = append(created, p.VSAKey(), p.VSAPub())
	}
	if !exists(p.NATSToken()) {
		b := make([]byte, 24)
		if _, err := rand.Read(b); err != nil {
			return created, err
		}
		if err := attest.WriteNewFile(p.NATSToken(), []byte(hex.EncodeToString(b)), 0o600); err != nil {
			return created, err
		}
		created = append(created, p.NATSToken())
	}
	if !exists(p.Policy()) {
		if err := attest.WriteNewFile(p.Policy(), []byte(policy.Example), 0o644); err != nil {
			return created, err
		}
		created = append(created, p.Policy())
	}
	return created, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

// Runtime is what a running `up` tells other commands (data dir's up.json).
type Runtime struct {
	PID      int    `json:"pid"`
	NATSURL  string `json:"natsUrl"`
	CacheURL string `json:"cacheUrl"`
	Tenant   string `json:"tenant"`
	// StatusURL is the stack's /status endpoint (StatusPath).
	StatusURL string `json:"statusUrl,omitempty"`
	// WebSocketURL and LeafNodeURL are the embedded NATS server's extra
	// listeners for firewalled workers and sites, when configured; leaf
	// nodes reach its JetStream through JetStreamDomain.
	WebSocketURL    string `json:"websocketUrl,omitempty"`
	LeafNodeURL     string `json:"leafnodeUrl,omitempty"`
	JetStreamDomain string `json:"jetstreamDomain,omitempty"`
}

// ReadRuntime reads the data directory's up.json; ErrNotRunning when there
// is none or its process is gone.
func ReadRuntime(p Paths) (*Runtime, error) {
	r, err := ReadRuntimeFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no %s", ErrNotRunning, p.Runtime())
	}
	if err != nil {
		return nil, err
	}
	if !processAlive(r.PID) {
		return nil, fmt.Errorf("%w: process %d from %s is gone", ErrNotRunning, r.PID, p.Runtime())
	}
	return r, nil
}

// ErrNotRunning means no `provenix up` is running for a data directory.
var ErrNotRunning = errors.New("provenix up is not running")

// ReadRuntimeFile reads up.json without checking the process.
func ReadRuntimeFile(p Paths) (*Runtime, error) {
	b, err := os.ReadFile(p.Runtime())
	if err != nil {
		return nil, err
	}
	var r Runtime
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", p.Runtime(), err)
	}
	return &r, nil
}
