// Package tools holds the development tools of wsroom's Makefile in a
// module of their own, outside go.work, so that their dependencies reach
// neither the published modules nor the workspace. Run them with
//
//	GOWORK=off go -C internal/tools tool NAME
//
// (the Makefile does): the go command builds each at the version this
// go.mod requires and caches it.
package tools
