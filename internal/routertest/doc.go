// Package routertest holds tests, and runnable examples, that mount
// wsroom's handlers under common routers: net/http's ServeMux, chi, echo
// and gin. It is a module of its own so that the routers never become
// dependencies of wsroom itself.
//
// The module is never released: its go.mod replaces github.com/wsroom/wsroom
// with the tree it sits in, so that the tests run against the code beside
// them.
package routertest
