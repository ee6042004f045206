package action

import (
	"context"
	"fmt"
	"strings"

	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/forgeapi"
)

// forgeFeedback reports to the forge the workflow runs on: a commit status
// per system (context provenix/<system>) and, on tag builds, the bundles
// as release assets. It never fails the step: feedback is best effort and
// each problem is a warning.
type forgeFeedback struct {
	s                *step
	c                *forgeapi.Client
	owner, repo, sha string
	tag, cacheURL    string
}

func (s *step) forge(ctx context.Context) *forgeFeedback {
	fb := &forgeFeedback{s: s}
	if s.in.forgeToken == "" {
		return fb
	}
	get := s.cfg.Getenv
	server, repo := get("GITHUB_SERVER_URL"), get("GITHUB_REPOSITORY")
	owner, name, err := forgeapi.SplitRepo(repo)
	if server == "" || err != nil {
		s.gha.Warningf("forge feedback: GITHUB_SERVER_URL or GITHUB_REPOSITORY missing; no commit status")
		return fb
	}
	c, err := forgeapi.New(ctx, server, s.in.forgeToken)
	if err != nil {
		s.gha.Warningf("forge feedback: %v", err)
		return fb
	}
	fb.c, fb.owner, fb.repo, fb.sha, fb.cacheURL = c, owner, name, get("GITHUB_SHA"), s.in.cacheURL
	if t, ok := strings.CutPrefix(get("GITHUB_REF"), "refs/tags/"); ok {
		fb.tag = t
	}
	return fb
}

func (fb *forgeFeedback) statuses(ctx context.Context, rows []Row, state forgeapi.State, desc string) {
	if fb.c == nil || fb.sha == "" {
		return
	}
	bySystem := map[string][]Row{}
	for _, r := range rows {
		bySystem[r.System] = append(bySystem[r.System], r)
	}
	for sys, rs := range bySystem {
		st := forgeapi.Status{System: sys, State: state, Description: fmt.Sprintf("%d output(s) %s", len(rs), desc)}
		if fb.cacheURL != "" && len(rs) > 0 {
			st.TargetURL = fb.cacheURL + "/" + cachelayout.ProvenanceKey(rs[0].StorePath)
		}
		if err := fb.c.SetStatus(ctx, fb.owner, fb.repo, fb.sha, st); err != nil {
			fb.s.gha.Warningf("forge feedback: commit status for %s: %v", sys, err)
		}
	}
}

func (fb *forgeFeedback) releaseAssets(ctx context.Context, rows []Row) {
	if fb.c == nil || fb.tag == "" {
		return
	}
	var files []string
	for _, r := range rows {
		if r.Bundle != "" {
			files = append(files, r.Bundle)
		}
	}
	if len(files) == 0 {
		return
	}
	if _, err := fb.c.AttachBundles(ctx, fb.owner, fb.repo, fb.tag, files); err != nil {
		fb.s.gha.Warningf("forge feedback: release assets for %s: %v", fb.tag, err)
	}
}
