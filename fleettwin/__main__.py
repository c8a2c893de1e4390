from fleettwin.cli import main

raise SystemExit(main())
