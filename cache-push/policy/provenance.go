package policy

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"codeberg.org/provenix/provenix/attest"
)

// ErrIsolationMissing: the provenance does not record the isolation the
// policy requires of the forge job that built it.
var ErrIsolationMissing = fmt.Errorf("%w: build isolation missing", ErrDenied)

// isolationNames are those a runner records; a policy naming another
// would refuse everything, so it is refused at load.
var isolationNames = []string{attest.IsolationUID, attest.IsolationCgroup, attest.IsolationPrivateTmp}

func checkIsolationNames(names []string) error {
	for _, n := range names {
		if !slices.Contains(isolationNames, n) {
			return fmt.Errorf("require_isolation: %q is not one of %s", n, strings.Join(isolationNames, ", "))
		}
	}
	return nil
}

// CheckIsolation applies require_isolation to a verified Statement's
// external parameters: the forge job (workflow) must list every required
// isolation. Provenance from runners that record none (older ones, or
// without a job user pool or cgroups) and builds outside a forge job are
// refused when anything is required.
func (p *Policy) CheckIsolation(external attest.ExternalParameters) error {
	if len(p.RequireIsolation) == 0 {
		return nil
	}
	w := external.Workflow
	if w == nil {
		return fmt.Errorf("%w: not built in a forge job (require_isolation %s)", ErrIsolationMissing, strings.Join(p.RequireIsolation, ", "))
	}
	have := w.Isolation
	var missing []string
	for _, want := range p.RequireIsolation {
		if !slices.Contains(have, want) {
			missing = append(missing, want)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: the job had %s, the policy requires %s", ErrIsolationMissing, orNone(have), strings.Join(missing, ", "))
	}
	return nil
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// ErrSourceNotAllowed: the build's repository is not among the policy's
// sources.
var ErrSourceNotAllowed = fmt.Errorf("%w: source not allowed", ErrDenied)

// CheckSource applies the sources rule to a verified Statement's external
// parameters: the forge job's repository (runner builds) or the source
// repository (provenix build in a checkout).
func (p *Policy) CheckSource(external attest.ExternalParameters) error {
	if len(p.Sources) == 0 {
		return nil
	}
	var repos []string
	if w := external.Workflow; w != nil && w.Repository != "" {
		repos = append(repos, w.Repository)
		if w.Server != "" {
			repos = append(repos, strings.TrimRight(w.Server, "/")+"/"+w.Repository)
		}
	}
	if s := external.Source; s != nil && s.Repository != "" {
		repos = append(repos, s.Repository)
	}
	for _, r := range repos {
		for _, pat := range p.Sources {
			if ok, _ := path.Match(pat, r); ok {
				return nil
			}
		}
	}
	if len(repos) == 0 {
		return fmt.Errorf("%w: the provenance names no repository", ErrSourceNotAllowed)
	}
	return fmt.Errorf("%w: %s", ErrSourceNotAllowed, strings.Join(repos, ", "))
}
