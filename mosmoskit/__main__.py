from mosmoskit.cli import main

raise SystemExit(main())
