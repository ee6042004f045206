package forgeapi

import (
	"context"
	"fmt"
	"strings"
	"unicode/utf8"

	"code.gitea.io/sdk/gitea"
)

// MaxDescription is how many characters of a status description are sent.
const MaxDescription = 140

// ContextPrefix starts the context of every status Provenix sets.
const ContextPrefix = "provenix"

// State is a commit status state.
type State string

// The states SetStatus accepts.
const (
	StatePending State = "pending"
	StateSuccess State = "success"
	StateFailure State = "failure"
	StateError   State = "error"
)

// ParseState checks s is one of the states.
func ParseState(s string) (State, error) {
	switch st := State(s); st {
	case StatePending, StateSuccess, StateFailure, StateError:
		return st, nil
	}
	return "", fmt.Errorf("forgeapi: state %q: %w: want pending, success, failure or error", s, ErrInvalid)
}

// Status is what Provenix says about one commit for one system.
type Status struct {
	System      string // e.g. x86_64-linux; the context is provenix/<System>
	State       State
	Description string // e.g. "quorum 2/2 verified", "disputed: 2 NARs"; truncated to MaxDescription
	TargetURL   string // e.g. the provenance sidecar or the cache; optional
}

// Context is the status context the forge groups statuses by.
func (s Status) Context() string {
	if s.System == "" {
		return ContextPrefix
	}
	return ContextPrefix + "/" + s.System
}

// SetStatus sets the commit status of sha in owner/repo. A later status of
// the same context replaces it in the forge's combined view.
func (c *Client) SetStatus(ctx context.Context, owner, repo, sha string, s Status) error {
	if err := checkRepo(owner, repo); err != nil {
		return err
	}
	if sha == "" {
		return fmt.Errorf("forgeapi: status on %s/%s: %w: empty commit", owner, repo, ErrInvalid)
	}
	if _, err := ParseState(string(s.State)); err != nil {
		return err
	}
	if strings.ContainsAny(s.System, " /\t\n") {
		return fmt.Errorf("forgeapi: system %q: %w", s.System, ErrInvalid)
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	_, resp, err := c.sdk(ctx).CreateStatus(owner, repo, sha, gitea.CreateStatusOption{
		State:       gitea.StatusState(s.State),
		TargetURL:   s.TargetURL,
		Description: Truncate(s.Description, MaxDescription),
		Context:     s.Context(),
	})
	if err != nil {
		return apiError(fmt.Sprintf("set status %s=%s on %s/%s@%s", s.Context(), s.State, owner, repo, sha), resp, err)
	}
	return nil
}

// Truncate shortens s to at most n runes, ending it with "…" when cut.
func Truncate(s string, n int) string {
	s = strings.TrimSpace(s)
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return strings.TrimSpace(string(r[:n-1])) + "…"
}

// CurrentStatus is the latest status of context provenix/<system> on sha
// in owner/repo, and whether there is one: what the forge shows now, so a
// caller can skip setting the same status again.
func (c *Client) CurrentStatus(ctx context.Context, owner, repo, sha, system string) (Status, bool, error) {
	if err := checkRepo(owner, repo); err != nil {
		return Status{}, false, err
	}
	if sha == "" {
		return Status{}, false, fmt.Errorf("forgeapi: status of %s/%s: %w: empty commit", owner, repo, ErrInvalid)
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	want := Status{System: system}.Context()
	comb, resp, err := c.sdk(ctx).GetCombinedStatus(owner, repo, sha)
	if err != nil {
		return Status{}, false, apiError(fmt.Sprintf("read statuses of %s/%s@%s", owner, repo, sha), resp, err)
	}
	// The combined status holds the latest status of each context.
	for _, s := range comb.Statuses {
		if s != nil && s.Context == want {
			return Status{System: system, State: State(s.State), Description: s.Description, TargetURL: s.TargetURL}, true, nil
		}
	}
	return Status{}, false, nil
}
