package builder

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"codeberg.org/provenix/provenix/attest"
)

// ErrTarget: a target names nothing buildable (a relative .drv path, a
// missing file, a directory without default.nix) or a NAME=VALUE pair is
// malformed. Callers treat it as a usage error.
var ErrTarget = errors.New("bad target")

// targetError is an ErrTarget whose text is the message alone: the
// message already says which target or flag is wrong.
type targetError struct{ msg string }

func (e *targetError) Error() string        { return e.msg }
func (e *targetError) Is(target error) bool { return target == ErrTarget }

func badTarget(format string, args ...any) error {
	return &targetError{msg: fmt.Sprintf(format, args...)}
}

// Installable kinds, attest.Installable.Kind.
const (
	KindDrv   = "drv"
	KindFile  = "file"
	KindFlake = "flake"
)

// ParseTarget classifies what 'provenix build' and the workflow step are
// asked to build:
//
//	/nix/store/...drv          a derivation path (absolute)
//	FLAKEREF#ATTR, a:b         a flake installable (anything with # or :)
//	FILE.nix or DIR            a Nix file (a directory needs default.nix),
//	                           built with attr (nix-build -A), made absolute
//
// Errors match ErrTarget.
func ParseTarget(target, attr string) (attest.Installable, error) {
	switch {
	case strings.HasSuffix(target, ".drv"):
		if !filepath.IsAbs(target) {
			return attest.Installable{}, badTarget("%s: a derivation target must be an absolute store path", target)
		}
		return attest.Installable{Kind: KindDrv, Ref: target}, nil
	case strings.Contains(target, "#") || strings.Contains(target, ":"):
		return attest.Installable{Kind: KindFlake, Ref: target}, nil
	}
	fi, err := os.Stat(target)
	if err != nil {
		return attest.Installable{}, badTarget("target %s: %v (want FILE.nix -A ATTR, a .drv path or FLAKEREF#ATTR)", target, err)
	}
	if fi.IsDir() {
		if _, err := os.Stat(filepath.Join(target, "default.nix")); err != nil {
			return attest.Installable{}, badTarget("target %s: a directory without default.nix", target)
		}
	}
	abs, err := filepath.Abs(target)
	if err != nil {
		return attest.Installable{}, badTarget("target %s: %v", target, err)
	}
	return attest.Installable{Kind: KindFile, File: abs, Attr: attr}, nil
}

// ParsePairs reads NAME=VALUE values (of flag, for the error message), as
// --arg, --argstr and --nix-option take them once Nix's two-token form is
// joined (nix.JoinArgs). Errors match ErrTarget.
func ParsePairs(flag string, vals []string) (map[string]string, error) {
	m := make(map[string]string, len(vals))
	for _, v := range vals {
		k, val, ok := strings.Cut(v, "=")
		if !ok || k == "" {
			return nil, badTarget("--%s %q: want NAME=VALUE", flag, v)
		}
		m[k] = val
	}
	return m, nil
}

// TargetOptions are how ParseTargets completes each target.
type TargetOptions struct {
	// Attr is the attribute of file targets.
	Attr string
	// Args and ArgStrs are passed to file targets.
	Args, ArgStrs map[string]string
	// Source, when set, is recorded for every target.
	Source *attest.Source
	// DetectGitSource, when Source is nil, records for a file target the
	// git checkout it lives in (GitSource), if any.
	DetectGitSource bool
	// Workflow and InvocationID are recorded for every target.
	Workflow     *attest.Workflow
	InvocationID string
}

// ParseTargets classifies every target (ParseTarget) before anything is
// built, so a typo in the last one fails at once.
func ParseTargets(ctx context.Context, targets []string, o TargetOptions) ([]Target, error) {
	out := make([]Target, 0, len(targets))
	for _, t := range targets {
		in, err := ParseTarget(t, o.Attr)
		if err != nil {
			return nil, err
		}
		tg := Target{Installable: in, Args: o.Args, ArgStrs: o.ArgStrs, Source: o.Source, Workflow: o.Workflow, InvocationID: o.InvocationID}
		if tg.Source == nil && o.DetectGitSource && in.Kind == KindFile {
			tg.Source = GitSource(ctx, in.File)
		}
		out = append(out, tg)
	}
	return out, nil
}

// GitSource describes the git checkout file (or directory) lives in: the
// HEAD revision, the branch ref and the origin remote's URL. It returns nil
// outside a git checkout, or without git.
func GitSource(ctx context.Context, file string) *attest.Source {
	dir := file
	if fi, err := os.Stat(file); err == nil && !fi.IsDir() {
		dir = filepath.Dir(file)
	}
	out := func(args ...string) string {
		b, err := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...).Output()
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(b))
	}
	rev := out("rev-parse", "HEAD")
	if rev == "" {
		return nil
	}
	return &attest.Source{Repository: out("config", "--get", "remote.origin.url"), Revision: rev, Ref: out("symbolic-ref", "-q", "HEAD")}
}
