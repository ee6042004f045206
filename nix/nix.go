// Package nix drives the host's Nix through its command-line tools: it
// instantiates and realises derivations, reads path info and derivations,
// and streams store paths as NARs. Every call takes a context; the child
// process is killed when it is cancelled.
package nix

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/derivation"
)

// ErrNotInstalled means the Nix command-line tools are not on PATH.
var ErrNotInstalled = errors.New("nix is not installed: install it (Debian/Ubuntu: apt-get install nix-bin; elsewhere: https://nixos.org/download) and make sure nix-build is on PATH")

// Build outcomes callers can match with errors.Is.
var (
	// ErrBuildFailed: Nix ran the build and it failed (a builder error, a
	// timeout, a fixed-output hash mismatch).
	ErrBuildFailed = errors.New("nix: build failed")
	// ErrNotDeterministic: a --check rebuild produced an output that
	// differs from the one in the store.
	ErrNotDeterministic = errors.New("nix: rebuild differs from the output in the store")
)

// Nix runs the host's Nix tools.
type Nix struct {
	// Root, when set, is the root of a chroot store (nix --store ROOT): its
	// store paths still read /nix/store/..., but live under ROOT.
	Root string
	// Options are passed to every command as --option NAME VALUE.
	Options map[string]string
	// Stderr receives the build log; nil discards it.
	Stderr io.Writer
}

// OfflineOptions make Nix work without network and without the nixbld
// group, as on a fresh Debian machine running as root.
func OfflineOptions() map[string]string {
	return map[string]string{
		"substituters":          "",
		"build-users-group":     "",
		"experimental-features": "nix-command",
	}
}

// SubstituteOptions are OfflineOptions that substitute from one binary cache,
// trusting only trustedKey. Both narinfo disk-cache TTLs are zero: Nix keeps
// narinfos in ~/.cache/nix keyed by the cache URL, so a cache on a reused
// 127.0.0.1 port would otherwise be answered from an earlier cache's narinfo
// for the same store path, signed by another key.
func SubstituteOptions(cacheURL, trustedKey string) map[string]string {
	o := OfflineOptions()
	o["substituters"] = cacheURL
	o["trusted-public-keys"] = trustedKey
	o["narinfo-cache-negative-ttl"] = "0"
	o["narinfo-cache-positive-ttl"] = "0"
	return o
}

// Available reports whether Nix is installed.
func Available() error {
	for _, c := range []string{"nix-build", "nix-store", "nix-instantiate", "nix"} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("%w (%s not found)", ErrNotInstalled, c)
		}
	}
	return nil
}

func (n *Nix) args(extra ...string) []string {
	var a []string
	if n.Root != "" {
		a = append(a, "--store", n.Root)
	}
	keys := make([]string, 0, len(n.Options))
	for k := range n.Options {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		a = append(a, "--option", k, n.Options[k])
	}
	return append(a, extra...)
}

// run executes name with the store and option arguments, returning stdout.
func (n *Nix) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	var stdout bytes.Buffer
	if err := n.runTo(ctx, &stdout, name, args...); err != nil {
		return nil, err
	}
	return stdout.Bytes(), nil
}

// runTo executes name with its stdout going to w.
func (n *Nix) runTo(ctx context.Context, w io.Writer, name string, args ...string) error {
	cmd, stderr, err := n.command(ctx, name, args...)
	if err != nil {
		return err
	}
	cmd.Stdout = w
	return commandError(cmd.Run(), name, args, stderr)
}

// runUsage is runTo that also returns the user and system CPU time of
// the command and of the processes it waited for (wait4's rusage). A
// non-nil env is the command's environment.
func (n *Nix) runUsage(ctx context.Context, w io.Writer, env []string, name string, args ...string) (time.Duration, error) {
	cmd, stderr, err := n.command(ctx, name, args...)
	if err != nil {
		return 0, err
	}
	cmd.Stdout, cmd.Env = w, env
	err = cmd.Run()
	var cpu time.Duration
	if cmd.ProcessState != nil {
		cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	return cpu, commandError(err, name, args, stderr)
}

// command prepares name: its stderr goes to n.Stderr and to the returned
// buffer, which keeps the tail for error messages.
func (n *Nix) command(ctx context.Context, name string, args ...string) (*exec.Cmd, *bytes.Buffer, error) {
	if _, err := exec.LookPath(name); err != nil {
		return nil, nil, fmt.Errorf("%w (%s not found)", ErrNotInstalled, name)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	if n.Stderr != nil {
		cmd.Stderr = io.MultiWriter(n.Stderr, &tail{buf: &stderr})
	} else {
		cmd.Stderr = &tail{buf: &stderr}
	}
	return cmd, &stderr, nil
}

// commandError describes a failed command with the tail of its stderr, and
// maps Nix's build exit statuses onto ErrBuildFailed and
// ErrNotDeterministic. Nix's status is a bit mask over 0x60: 0x04 build
// failure, 0x01 timeout, 0x02 hash mismatch, 0x08 --check found a
// different output (100, 101, 102, 104).
func commandError(err error, name string, args []string, stderr *bytes.Buffer) error {
	if err == nil {
		return nil
	}
	msg := strings.TrimSpace(stderr.String())
	if msg == "" {
		msg = "(no output)"
	}
	cmdline := strings.Join(args, " ")
	if len(cmdline) > 512 {
		cmdline = cmdline[:512] + " ..."
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if code := ee.ExitCode(); code&0x60 == 0x60 && code < 0x70 {
			var kinds []error
			if code&0x08 != 0 {
				kinds = append(kinds, ErrNotDeterministic)
			}
			if code&0x07 != 0 {
				kinds = append(kinds, ErrBuildFailed)
			}
			if len(kinds) > 0 {
				return fmt.Errorf("%s %s: %w: %w: %s", name, cmdline, errors.Join(kinds...), err, msg)
			}
		}
	}
	return fmt.Errorf("%s %s: %w: %s", name, cmdline, err, msg)
}

// tail keeps the last 4 KiB written, for error messages.
type tail struct{ buf *bytes.Buffer }

func (t *tail) Write(p []byte) (int, error) {
	t.buf.Write(p)
	if t.buf.Len() > 4096 {
		b := t.buf.Bytes()[t.buf.Len()-4096:]
		t.buf.Reset()
		t.buf.Write(b)
	}
	return len(p), nil
}

func lines(b []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if s := strings.TrimSpace(sc.Text()); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Config returns Nix's effective settings: `nix config show`, or `nix
// show-config` on a Nix before 2.20 (the old name warns on newer ones).
// Should the version's choice be refused, the other name is tried.
func (n *Nix) Config(ctx context.Context) (map[string]string, error) {
	v, err := n.Version(ctx)
	if err != nil {
		return nil, err
	}
	cmds := [][]string{{"config", "show"}, {"show-config"}}
	if !v.hasConfigShow() {
		cmds[0], cmds[1] = cmds[1], cmds[0]
	}
	out, err := n.run(ctx, "nix", n.args(append([]string{"--extra-experimental-features", "nix-command"}, cmds[0]...)...)...)
	if err != nil && ctx.Err() == nil {
		var err2 error
		if out, err2 = n.run(ctx, "nix", n.args(append([]string{"--extra-experimental-features", "nix-command"}, cmds[1]...)...)...); err2 == nil {
			err = nil
		}
	}
	if err != nil {
		return nil, err
	}
	cfg := make(map[string]string)
	for _, l := range lines(out) {
		if k, v, ok := strings.Cut(l, " = "); ok {
			cfg[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return cfg, nil
}

// Instantiate evaluates attr of a .nix file to derivation paths.
// args are passed as --arg NAME EXPR, argstrs as --argstr NAME VALUE.
func (n *Nix) Instantiate(ctx context.Context, file, attr string, args, argstrs map[string]string) ([]string, error) {
	a := n.args(file)
	if attr != "" {
		a = append(a, "-A", attr)
	}
	for _, kv := range sortedPairs(args) {
		a = append(a, "--arg", kv[0], kv[1])
	}
	for _, kv := range sortedPairs(argstrs) {
		a = append(a, "--argstr", kv[0], kv[1])
	}
	out, err := n.run(ctx, "nix-instantiate", a...)
	if err != nil {
		return nil, err
	}
	drvs := lines(out)
	if len(drvs) == 0 {
		return nil, fmt.Errorf("nix-instantiate %s: no derivation", file)
	}
	return drvs, nil
}

// FlakeDerivation evaluates a flake installable to its derivation path.
// It needs a Nix with the flakes feature enabled.
func (n *Nix) FlakeDerivation(ctx context.Context, installable string) (string, error) {
	out, err := n.run(ctx, "nix", n.args("--extra-experimental-features", "nix-command flakes", "path-info", "--derivation", installable)...)
	if err != nil {
		return "", err
	}
	l := lines(out)
	if len(l) != 1 {
		return "", fmt.Errorf("flake installable %s: want one derivation, got %d", installable, len(l))
	}
	return l[0], nil
}

// Realise builds (or substitutes) drv and returns its output paths.
func (n *Nix) Realise(ctx context.Context, drv string) ([]string, error) {
	return n.RealiseWith(ctx, RealiseOptions{}, drv)
}

// RealiseOptions tune RealiseWith.
type RealiseOptions struct {
	// NoSubstitute builds the outputs on this machine instead of fetching
	// them from a substituter (--option substitute false). It holds for
	// every derivation Nix has to realise in the call, dependencies
	// included: realise those first if substituting them is fine.
	NoSubstitute bool
	// Check rebuilds outputs that are already valid and compares the
	// result with them (--check): a difference fails with
	// ErrNotDeterministic, and the store keeps its copy either way. Every
	// output must be valid already.
	Check bool
	// CPU, when set, receives the user and system CPU time nix-store and
	// the processes it waited for used: the builds, when this Nix builds
	// them itself (a local store, not through a daemon).
	CPU *time.Duration
	// PrivateNarinfoCache gives the call a narinfo disk cache of its own
	// (XDG_CACHE_HOME in a temporary directory, removed after), for
	// callers that substitute from several commands at once. Nix 2.8
	// opens ~/.cache/nix/binary-cache-v6.sqlite with "insert or replace"
	// of the cache's row, which gives it a new id: another command
	// substituting from the same cache at that moment then fails with
	// "constraint failed" on its narinfo insert. A fresh cache also
	// answers nothing from a lookup made before a path was published.
	// (Through a daemon, the daemon substitutes with its own cache.)
	PrivateNarinfoCache bool
}

// RealiseWith realises drvs in one nix-store call and returns their output
// paths.
func (n *Nix) RealiseWith(ctx context.Context, o RealiseOptions, drvs ...string) ([]string, error) {
	if len(drvs) == 0 {
		return nil, nil
	}
	a := n.args()
	if o.NoSubstitute {
		// After n.Options: the last --option of a name wins.
		a = append(a, "--option", "substitute", "false")
	}
	a = append(a, "--realise")
	if o.Check {
		a = append(a, "--check")
	}
	var env []string
	if o.PrivateNarinfoCache {
		dir, err := os.MkdirTemp("", "provenix-narinfo-cache-")
		if err != nil {
			return nil, fmt.Errorf("nix: narinfo cache: %w", err)
		}
		defer os.RemoveAll(dir)
		env = append(os.Environ(), "XDG_CACHE_HOME="+dir)
	}
	var out bytes.Buffer
	cpu, err := n.runUsage(ctx, &out, env, "nix-store", append(a, drvs...)...)
	if o.CPU != nil {
		*o.CPU = cpu
	}
	if err != nil {
		return nil, err
	}
	return lines(out.Bytes()), nil
}

// Invalid returns those of paths that are not valid in the store, in the
// order given.
func (n *Nix) Invalid(ctx context.Context, paths ...string) ([]string, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	out, err := n.run(ctx, "nix-store", n.args(append([]string{"--check-validity", "--print-invalid"}, paths...)...)...)
	if err != nil {
		return nil, err
	}
	return lines(out), nil
}

// PathInfo is what the Nix database records of a valid store path.
type PathInfo struct {
	Path       string
	NarHash    [32]byte
	NarSize    uint64
	References []string
	// Deriver is the derivation that produced the path, "" if unknown.
	Deriver string
	// The fields below are filled by PathInfos, not by PathInfo.

	// Registered is when the path became valid here, to the second.
	Registered time.Time
	// Ultimate: built by this store, not substituted or imported (nor
	// added: sources are not ultimate).
	Ultimate bool
	// CA is the content address in Nix's string form
	// ("fixed:r:sha256:<nix32>", "fixed:sha256:…", "text:sha256:…"); ""
	// for an input-addressed path.
	CA         string
	Signatures []string
}

// PathInfo returns the registration of valid store paths, in the order
// asked, without Registered, Ultimate, CA and Signatures (PathInfos has
// them). It reads `nix-store --dump-db`, which reports exactly the paths
// given: `nix path-info` takes a .drv for its outputs on older Nix.
func (n *Nix) PathInfo(ctx context.Context, paths ...string) ([]PathInfo, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	out, err := n.run(ctx, "nix-store", n.args(append([]string{"--dump-db"}, paths...)...)...)
	if err != nil {
		return nil, err
	}
	byPath, err := parseDumpDB(out)
	if err != nil {
		return nil, err
	}
	infos := make([]PathInfo, 0, len(paths))
	for _, p := range paths {
		pi, ok := byPath[p]
		if !ok {
			return nil, fmt.Errorf("nix-store --dump-db: no info for %s", p)
		}
		infos = append(infos, pi)
	}
	return infos, nil
}

// parseDumpDB reads the registration format of nix-store --dump-db: per
// path, lines path, NAR hash, NAR size, deriver (may be empty), the number
// of references, then the references.
func parseDumpDB(out []byte) (map[string]PathInfo, error) {
	ls := strings.Split(string(out), "\n")
	byPath := make(map[string]PathInfo)
	for i := 0; i < len(ls); {
		if ls[i] == "" {
			i++
			continue
		}
		if i+4 >= len(ls) {
			return nil, fmt.Errorf("nix-store --dump-db: truncated record for %q", ls[i])
		}
		pi := PathInfo{Path: ls[i], Deriver: ls[i+3]}
		h, err := parseNarHash(ls[i+1])
		if err != nil {
			return nil, fmt.Errorf("nix-store --dump-db: %s: NAR hash %q is not a sha256", pi.Path, ls[i+1])
		}
		pi.NarHash = h
		if pi.NarSize, err = strconv.ParseUint(ls[i+2], 10, 64); err != nil {
			return nil, fmt.Errorf("nix-store --dump-db: %s: NAR size: %w", pi.Path, err)
		}
		nrefs, err := strconv.Atoi(ls[i+4])
		if err != nil || nrefs < 0 || i+5+nrefs > len(ls) {
			return nil, fmt.Errorf("nix-store --dump-db: %s: bad reference count %q", pi.Path, ls[i+4])
		}
		pi.References = append([]string(nil), ls[i+5:i+5+nrefs]...)
		byPath[pi.Path] = pi
		i += 5 + nrefs
	}
	return byPath, nil
}

// RealPath is where a store path's files are on this machine.
func (n *Nix) RealPath(storePath string) string {
	if n.Root == "" {
		return storePath
	}
	return filepath.Join(n.Root, storePath)
}

// ReadDerivation parses a .drv from the store.
func (n *Nix) ReadDerivation(drvPath string) (*derivation.Derivation, error) {
	f, err := os.Open(n.RealPath(drvPath))
	if err != nil {
		return nil, fmt.Errorf("read derivation: %w", err)
	}
	defer f.Close()
	d, err := derivation.ReadDerivation(f)
	if err != nil {
		return nil, fmt.Errorf("read derivation %s: %w", drvPath, err)
	}
	return d, nil
}

func sortedPairs(m map[string]string) [][2]string {
	out := make([][2]string, 0, len(m))
	for k, v := range m {
		out = append(out, [2]string{k, v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out
}

// Systems are the systems a Nix configuration (Config) builds for: its
// system, then its extra-platforms, without repeats.
func Systems(cfg map[string]string) []string {
	var out []string
	for _, s := range append([]string{strings.TrimSpace(cfg["system"])}, strings.Fields(cfg["extra-platforms"])...) {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// HostSystems are the systems this Nix builds for (Systems of its Config).
// A configuration that names no system is an error: nothing could be built.
func (n *Nix) HostSystems(ctx context.Context) ([]string, error) {
	cfg, err := n.Config(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the Nix configuration: %w", err)
	}
	if strings.TrimSpace(cfg["system"]) == "" {
		return nil, errors.New("the Nix configuration names no system")
	}
	return Systems(cfg), nil
}
